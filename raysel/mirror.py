"""A copy of the run directory in object storage (`run.mirror`: s3://, gs://, any URI pyarrow.fs
opens), so that a run outlives the cluster it ran on.

The run directory stays the working copy (storage every node sees); the mirror receives each
stage's files as the stage completes, its marker after them, and the manifest last, so a marker
in the mirror never vouches for a file that is not there. `--resume` into a run directory with no
completed stage (a new cluster's) first restores it from the mirror: the markers, the files they
vouch for, the config and the manifest, and nothing else (a file no marker vouches for is stale).

    python jobs/iterit.py --run-dir /efs/runs/x --set run.mirror=s3://bucket/runs/x
    python jobs/iterit.py --run-dir /efs/runs/x --resume --set run.mirror=s3://bucket/runs/x   # new cluster

An S3-compatible store that is not AWS takes its endpoint in the URI:
s3://bucket/runs/x?endpoint_override=minio:9000&scheme=http. Credentials come from the usual
places (the environment, ~/.aws, the node's instance role).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from raysel.config import UserError

log = logging.getLogger(__name__)

MARKERS = ".done"
ALWAYS = ("config.yaml", "manifest.json")  # written outside any stage; restored with the markers


class Mirror:
    def __init__(self, uri: str):
        from pyarrow import fs

        try:
            self.fs, self.root = fs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"run.mirror={uri!r} is not a storage URI pyarrow can open "
                            f"(s3://bucket/prefix, gs://bucket/prefix): {e}") from None
        self.uri = uri.split("?")[0]  # the query may hold an endpoint; never a secret, but noise in logs
        self.root = self.root.rstrip("/")

    # --- what is there ------------------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        """Every file under the mirror: path relative to it -> bytes."""
        from pyarrow import fs

        infos = self._call("list", self.fs.get_file_info,
                           fs.FileSelector(self.root, recursive=True, allow_not_found=True))
        prefix = self.root + "/"
        return {i.path[len(prefix):]: i.size for i in infos if i.type == fs.FileType.File}

    def holds_a_run(self) -> bool:
        return any(rel in ALWAYS or rel.startswith(MARKERS + "/") for rel in self.sizes())

    # --- up and down --------------------------------------------------------------------------

    def push(self, local_root: Path, rels: Iterable[str]) -> None:
        """Copy these files (paths relative to the run directory) up, in the order given."""
        for rel in rels:
            source = Path(local_root) / rel
            if source.is_file():
                self._call(f"copy {rel} to", self._copy, str(source), f"{self.root}/{rel}", up=True)

    def sync(self, local_root: Path) -> int:
        """Push every completed stage's files that the mirror lacks (or holds at another size), then
        its marker, then the manifest: what a failed upload or a newly added mirror left out."""
        local_root, there = Path(local_root), self.sizes()
        pushed = 0
        for marker in sorted((local_root / MARKERS).glob("*.json")):
            outputs = json.loads(marker.read_text()).get("outputs", {})
            missing = [rel for rel, size in outputs.items() if there.get(rel) != size]
            rel_marker = f"{MARKERS}/{marker.name}"
            if missing or there.get(rel_marker) != marker.stat().st_size:
                self.push(local_root, [*missing, rel_marker])
                pushed += len(missing) + 1
        self.push(local_root, ALWAYS)
        if pushed:
            log.info("run.mirror %s: pushed %d file(s) it lacked", self.uri, pushed)
        return pushed

    def restore(self, local_root: Path) -> int:
        """Bring the run back into `local_root` (one with no completed stage): the config, the
        manifest, the markers and the files they vouch for. Returns the number of files copied."""
        local_root, there = Path(local_root), self.sizes()
        markers = sorted(rel for rel in there if rel.startswith(MARKERS + "/") and rel.endswith(".json"))
        wanted = [rel for rel in ALWAYS if rel in there] + markers
        for rel in markers:
            self.fetch(rel, local_root)
            outputs = json.loads((local_root / rel).read_text()).get("outputs", {})
            wanted += [o for o, size in outputs.items() if there.get(o) == size]  # the rest: recomputed
        for rel in wanted:
            self.fetch(rel, local_root)
        log.info("run.mirror %s: restored %d file(s) (%d stage markers) into %s", self.uri, len(set(wanted)),
                 len(markers), local_root)
        return len(set(wanted))

    def fetch(self, rel: str, local_root: Path) -> None:
        """One file (relative path) into the run directory, unless it is there already."""
        target = local_root / rel
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")  # removed at resume if we die here
        self._call(f"copy {rel} from", self._copy, f"{self.root}/{rel}", str(tmp), up=False)
        os.replace(tmp, target)

    def _copy(self, source: str, destination: str, up: bool) -> None:
        from pyarrow import fs

        local = fs.LocalFileSystem()
        fs.copy_files(source, destination, source_filesystem=local if up else self.fs,
                      destination_filesystem=self.fs if up else local)

    def _call(self, what: str, fn, *args, **kwargs):
        """fn(*args), with a storage failure said in one line: the run directory still holds the
        work, and a --resume pushes what the mirror lacks."""
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            raise UserError(f"run.mirror {self.uri}: could not {what} it: {e}. The run directory keeps "
                            "everything done so far; fix the storage and --resume") from None
