"""Medians of alternated training-throughput runs (bench/mfm_cpu_compare.sh, bench/mfm_cpu_peer.sh).

Reads lines "LABEL {json}" (popflow_mfm_bench --json, bench/mfm_peer_torch.py --json) on stdin and
prints each label's median steady steps/s and first final loss, then the first label's median over
the second's.
"""
import json
import statistics
import sys

rows = {}
for line in sys.stdin:
    who, js = line.split(" ", 1)
    rows.setdefault(who, []).append(json.loads(js))
medians = {}
for who, ds in rows.items():
    medians[who] = statistics.median(d["steady_steps_per_s"] for d in ds)
    print("median %s: %.3f steady steps/s over %d runs, final loss %s"
          % (who, medians[who], len(ds), ds[0].get("final_loss")))
if len(medians) == 2:
    first, second = medians
    print("%s / %s: %.2f" % (first, second, medians[first] / medians[second]))
