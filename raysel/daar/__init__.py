"""DaaR, diversity as a reward (docs/methods.md, DaaR): the model's first layers and two small heads
choose the data the whole model is tuned on.

    features.py    the text DaaR embeds; the first `probe_layers` layers; masked mean pooling
    domains.py     seeds per domain, their centroids, k-means pseudo-labels started at them
    heads.py       the domain head and the reward head (pure torch)
    synthesize.py  seeds written by the instruct model, when there is no seeds file
    stage.py       the stages (seeds, probe, heads, reward) and their Ray Data actors

The selector is raysel.selection.daar; the loop, raysel.loops.daar.
"""
