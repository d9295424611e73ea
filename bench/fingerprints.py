"""Training fingerprints: a SHA-256 of each case's final weights and epoch table, to compare two trees.

    python bench/fingerprints.py OUT.json [CASE ...]

A restructure must leave every number alone: run this on the tree before and after (PYTHONPATH
pointing at each) and compare the two files; equal hashes mean bit-identical weights and tables on
this machine. Public API only (``msam_lab.train``, ``Run.load_model``), so any version runs it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile

import msam_lab

AV = {"dataset": "av-digits", "epochs": 2, "train_eval_samples": 128, "checkpoint_every": 0}
SYN = {"dataset": "synthetic", "epochs": 2, "data": {"n_samples": 400}, "checkpoint_every": 0}
CASES = {
    "av-joint": {**AV, "method": "joint"},
    "av-sam": {**AV, "method": "sam"},
    "av-msam": {**AV, "method": "msam"},
    "av-msam-unimodal": {**AV, "method": "msam", "msam_variant": "unimodal"},
    "av-msam-params": {**AV, "method": "msam", "msam_variant": "params"},
    "syn-msam-loss": {**SYN, "method": "msam", "shapley_value": "loss", "share_rule": "softmax"},
    "syn-msam-random": {**SYN, "method": "msam", "msam_variant": "params", "msam_dominant": "random"},
    "syn-ogm_ge": {**SYN, "method": "ogm_ge"},
    "syn-agm": {**SYN, "method": "agm"},
    "syn-cggm": {**SYN, "method": "cggm"},
    "syn-reconboost": {**SYN, "method": "reconboost", "recon_stage_epochs": 1, "recon_correct_epochs": 1},
    "syn-mie": {**SYN, "method": "mie", "mie_stage_steps": 3},
    "syn-masam": {**SYN, "method": "masam"},
    "syn-unimodal": {**SYN, "method": "unimodal", "modality": "m0"},
    "syn-early": {**SYN, "method": "msam", "fusion": "early"},
}


def fingerprint(config: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = msam_lab.train(config, out=f"{tmp}/run", quiet=True)
        model = run.load_model()
        weights = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        table = run.epochs.drop(columns=[c for c in run.epochs.columns if "time" in c or c.endswith("_s")])
        return {
            "weights": weights.hexdigest()[:16],
            "table": hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:16],
            "test_acc": float(run.epochs["test_acc"].iloc[-1]),
        }


if __name__ == "__main__":
    out, names = sys.argv[1], sys.argv[2:] or list(CASES)
    result = {name: fingerprint(CASES[name]) for name in names}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    for name, fp in result.items():
        print(f"{name:20s} {fp['weights']} {fp['table']} {fp['test_acc']:.4f}")
