"""Selection engine benchmark: lazy vs naive greedy, the greedy at a million, the embedding greedy.

    python benchmarks/selection.py            # the full run (tens of minutes on 2 cores)
    python benchmarks/selection.py --quick    # small sizes, a smoke test in seconds

(a) lazy vs naive IterIT greedy at N = 20,000, k = 1,000: identical selections? speed ratio; and
    how much of the selection hashed features share with exact (vocabulary) features.
(b) N = 1,000,000 synthetic responses (Zipf words, 20-300 words), k = 50,000, gamma = 0.1: hashed
    TF-IDF featurisation with Ray Data (responses read from parquet shards, never in the driver),
    then the greedy; the driver's peak memory.
(c) the embedding greedy (IFD x (1 - max cosine), FAISS variant) on 1,000,000 x 384 float16, k = 50,000.
(d) the distributed greedy (GreeDi, Ray tasks over shards of 500,000 rows) at 1M, 2M and 4M
    synthetic rows, k = 50,000: its time and the driver's peak memory at each size, then at 1M
    its objective and selection against the exact lazy greedy's (run last, in the driver, so that
    the driver's peak memory before it is GreeDi's). The rows are hashed 1-3-gram counts drawn
    with the statistics of the synthetic responses (synthetic.hashed_counts: tokenising 4M texts
    would dominate the run; (b) measures that), a folder per million rows; both greedies start
    from them.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raysel.demo import synthetic  # noqa: E402
from raysel.selection import features, greedy, select  # noqa: E402

FIGURES: dict = {}


def report(name: str, value, unit: str = "") -> None:
    FIGURES[name] = value
    print(f"{name}: {value}{(' ' + unit) if unit else ''}", flush=True)


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)  # ru_maxrss is in KiB


def ids_for(n: int) -> np.ndarray:
    return np.array([f"s{i:07d}" for i in range(n)], dtype=object)  # id order = index order


def naive_iterit(w, ifd, k: int, gamma: float) -> np.ndarray:
    """The naive loop: every step recomputes D(i | S) for every row (O(k * nnz))."""
    table = greedy.decay_table(gamma, k)
    counts = np.zeros(w.shape[1], dtype=np.int64)
    open_ = np.isfinite(ifd) & (ifd < 1.0)
    order = []
    for _ in range(k):
        score = np.where(open_, ifd * greedy.diversity_gains(w, table[counts]), -np.inf)
        i = int(np.argmax(score))  # first maximum: the lowest index, which is the lowest id here
        order.append(i)
        open_[i] = False
        counts[w.indices[w.indptr[i]:w.indptr[i + 1]]] += 1
    return np.array(order)


def lazy_vs_naive(n: int, k: int, n_features: int) -> None:
    print(f"\n(a) lazy vs naive greedy, N={n}, k={k}", flush=True)
    texts = synthetic.responses(n, seed=1)
    w = features.hashed_tfidf(texts, n_features)
    ifd = synthetic.ifd_scores(n, seed=2)
    t_lazy = float("inf")
    for _ in range(3):  # a second-long timing on a shared machine: take the best of three
        t0 = time.perf_counter()
        lazy = select("iterit", ifd, k, ids=ids_for(n), features=w, gamma=0.1)
        t_lazy = min(t_lazy, time.perf_counter() - t0)
    t0 = time.perf_counter()
    naive = naive_iterit(w, ifd, k, 0.1)
    t_naive = time.perf_counter() - t0
    report("lazy_20k_s", round(t_lazy, 3), "s")
    report("naive_20k_s", round(t_naive, 2), "s")
    report("identical_selection", bool(np.array_equal(lazy.order[:k], naive)))
    report("lazy_vs_naive_speedup", round(t_naive / t_lazy, 1), "x")
    exact = select("iterit", ifd, k, ids=ids_for(n), features=features.exact_tfidf(texts), gamma=0.1)
    overlap = len(set(exact.selected.tolist()) & set(lazy.selected.tolist())) / k
    report("hashed_vs_exact_overlap_20k", round(overlap, 4))


def write_pool(folder: Path, n: int, shard: int = 50_000) -> None:
    """Synthetic responses as parquet shards (id, response), generated a shard at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, n, shard)):
        m = min(shard, n - start)
        table = pa.table({"id": [f"s{i:07d}" for i in range(start, start + m)],
                          "response": synthetic.responses(m, seed=1000 + s)})
        pq.write_table(table, folder / f"part-{s:04d}.parquet")


def greedy_at_scale(n: int, k: int, n_features: int, workdir: Path, use_ray: bool) -> None:
    print(f"\n(b) IterIT at N={n}, k={k}, gamma=0.1, {n_features} hashed buckets", flush=True)
    t0 = time.perf_counter()
    write_pool(workdir / "pool", n)
    report("generate_1m_s", round(time.perf_counter() - t0, 1), "s")
    t0 = time.perf_counter()
    if use_ray:
        use_ray = start_ray()
    if use_ray:
        import ray

        ids, w = features.hashed_tfidf_ray(ray.data.read_parquet(str(workdir / "pool")), n_features)
        ray.shutdown()
    else:
        import pyarrow.dataset as ds

        table = ds.dataset(str(workdir / "pool")).to_table()
        ids = np.asarray(table.column("id").to_pylist(), dtype=object)
        w = features.hashed_tfidf(table.column("response").to_pylist(), n_features)
        del table
    report("featurize_1m_s", round(time.perf_counter() - t0, 1), "s")
    report("featurize_path", "ray" if use_ray else "in-process")
    report("nnz_1m", int(w.nnz))
    report("rss_after_featurize_gb", peak_rss_gb(), "GB")
    ifd = synthetic.ifd_scores(n, seed=2)[np.array([int(i[1:]) for i in ids])]  # IFD by id, whatever the order
    t0 = time.perf_counter()
    sel = select("iterit", ifd, k, ids=ids, features=w, gamma=0.1)
    report("greedy_1m_s", round(time.perf_counter() - t0, 1), "s")
    report("greedy_1m_selected", int(sel.k))
    report("peak_rss_gb", peak_rss_gb(), "GB")


def start_ray() -> bool:
    """A local 2-CPU Ray session; on a machine too loaded to start one, say so and go on without."""
    import ray

    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - any start-up failure means: featurise in process
        print(f"Ray did not start ({e}); featurising in this process instead", flush=True)
        return False
    ray.data.DataContext.get_current().enable_progress_bars = False
    return True


def embedding_at_scale(n: int, k: int, dim: int) -> None:
    print(f"\n(c) embedding greedy at N={n} x {dim} float16, k={k}", flush=True)
    t0 = time.perf_counter()
    x = synthetic.embeddings(n, dim=dim, seed=5)
    report("generate_embeddings_s", round(time.perf_counter() - t0, 1), "s")
    ifd = synthetic.ifd_scores(n, seed=6)
    t0 = time.perf_counter()
    sel = select("embedding", ifd, k, ids=ids_for(n), embeddings=x)
    report("embedding_greedy_1m_s", round(time.perf_counter() - t0, 1), "s")
    report("embedding_greedy_selected", int(sel.k))
    report("embedding_mean_gain_selected", round(float(np.mean(sel.diversity[:sel.k])), 4))
    report("peak_rss_with_embeddings_gb", peak_rss_gb(), "GB")


def greedi_at_scale(sizes: list[int], k: int, shard_rows: int, n_features: int, workdir: Path) -> None:
    from raysel.selection import greedi

    print(f"\n(d) GreeDi at N={sizes}, k={k}, shards of {shard_rows} rows", flush=True)
    if not start_ray():
        print("GreeDi needs Ray; skipped", flush=True)
        return
    step = 1_000_000 if sizes[-1] >= 1_000_000 else sizes[0]
    t0 = time.perf_counter()
    folders = counts_by_million(workdir, sizes[-1], step, n_features)
    report("greedi_counts_s", round(time.perf_counter() - t0, 1), "s")
    seconds, rss, uss, ratio_at = {}, {}, {}, sizes[0]
    for n in sizes:
        ids = np.char.add("s", np.char.zfill(np.arange(n).astype(str), 7))  # fixed width: no objects per row
        ifd = synthetic.ifd_scores(n, seed=2)
        ok = ifd < 1.0
        t0 = time.perf_counter()
        with PeakPrivateMemory() as private:
            shards = greedi.plan_shards(greedi.list_pieces(folders[:n // step]), shard_rows)
            source = greedi.Source("tfidf", greedi.idf_of(shards, n_features), n_features)
            ranking = greedi.greedi(shards, source, greedi.Lookup.of(ids[ok], ifd[ok]), "iterit", k,
                                    greedi.Params(), shard_rows)
        seconds[n], rss[n], uss[n] = round(time.perf_counter() - t0, 1), peak_rss_gb(), private.peak_gb
        print(f"  N={n}: {seconds[n]}s, driver peak RSS {rss[n]} GB, private {uss[n]} GB, {ranking.stats}",
              flush=True)
        if n == ratio_at:
            distributed, lookup, source_at = ranking, greedi.Lookup.of(ids[ok], ifd[ok]), source
        del ids, ifd, ranking
    report("greedi_s_by_n", seconds, "s")
    report("greedi_driver_rss_gb_by_n", rss, "GB (peak RSS: counts the object-store pages the driver read)")
    report("greedi_driver_private_gb_by_n", uss, "GB (peak unique set size, sampled)")
    t0 = time.perf_counter()
    shard = greedi.load_shard([p for f in folders[:ratio_at // step] for p in greedi.list_pieces(f)], source_at, lookup)
    exact = select("iterit", shard.ifd, k, ids=shard.ids, features=shard.rows, gamma=0.1)
    report("exact_1m_s", round(time.perf_counter() - t0, 1), "s")
    report("exact_1m_driver_rss_gb", peak_rss_gb(), "GB")
    ratio = greedi.objective(distributed.score, k) / greedi.objective(exact.score, k)
    overlap = len(set(distributed.ids[:k].tolist()) & set(shard.ids[exact.selected].tolist())) / k
    report("greedi_objective_ratio_1m", round(ratio, 5))
    report("greedi_overlap_1m", round(overlap, 4))
    report("greedi_vs_exact_time_1m", round(seconds[ratio_at] / FIGURES["exact_1m_s"], 2), "x")


class PeakPrivateMemory:
    """The most private memory (USS: pages no other process shares, so not the object store's)
    this process held while the block ran, sampled every 0.2 s."""

    def __enter__(self):
        import threading

        import psutil

        self.peak, self._stop, process = 0, threading.Event(), psutil.Process()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, process.memory_full_info().uss)
                self._stop.wait(0.2)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return round(self.peak / 1024**3, 2)


def counts_by_million(workdir: Path, n: int, step: int, n_features: int, per_file: int = 50_000) -> list[Path]:
    """Synthetic hashed counts (synthetic.hashed_counts: the statistics of hashed Zipf responses,
    without tokenising text, which part (b) measures) in the layout write_hashed_counts writes,
    a folder per `step` rows, files written by Ray tasks."""
    import ray

    @ray.remote
    def write_file(path: str, start: int, m: int, seed: int) -> None:
        import pyarrow.parquet as pq

        ids = [f"s{i:07d}" for i in range(start, start + m)]
        table = features.counts_table(ids, *synthetic.hashed_counts(m, n_features, seed=seed))
        pq.write_table(table, path, row_group_size=per_file // 4)

    per_file = min(per_file, step)
    folders = [workdir / f"counts-{i}" for i in range(-(-n // step))]
    for f in folders:
        f.mkdir(parents=True)
    ray.get([write_file.remote(str(folders[start // step] / f"part-{start // per_file:04d}.parquet"), start,
                               min(per_file, n - start), 1000 + start // per_file)
             for start in range(0, n, per_file)])
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test in seconds")
    parser.add_argument("--n-features", type=int, default=features.DEFAULT_N_FEATURES,
                        help="hashed buckets (default: the config default, 2**22)")
    parser.add_argument("--no-ray", action="store_true", help="featurise (b) in this process instead of Ray Data")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a, b, c, d")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    skip = set(args.skip.split(","))
    sizes = dict(a=(2_000, 100), b=(20_000, 1_000), c=(20_000, 1_000), d=([20_000, 40_000, 80_000], 1_000, 5_000)) \
        if args.quick else dict(a=(20_000, 1_000), b=(1_000_000, 50_000), c=(1_000_000, 50_000),
                                d=([1_000_000, 2_000_000, 4_000_000], 50_000, 500_000))
    report("quick", args.quick)
    report("n_features", args.n_features)
    workdir = Path(tempfile.mkdtemp(prefix="raysel-bench-"))
    try:
        if "a" not in skip:
            lazy_vs_naive(*sizes["a"], args.n_features)
        if "b" not in skip:
            greedy_at_scale(*sizes["b"], args.n_features, workdir, use_ray=not args.no_ray)
        if "c" not in skip:
            embedding_at_scale(*sizes["c"], dim=384)
        if "d" not in skip:
            greedi_at_scale(*sizes["d"], args.n_features, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(FIGURES), flush=True)


if __name__ == "__main__":
    main()
