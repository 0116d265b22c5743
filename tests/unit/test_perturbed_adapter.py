"""Real change on real weights: a LoRA adapter perturbed by a known amount is detected; a negligible one is not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from monitor.analysis.baselines import pin_baseline
from monitor.backends import ModelSpec
from monitor.evals.evalset import load_evalset
from monitor.service.after_job import AnalysisPolicy, analyze_run
from monitor.service.plan import RunPlan
from monitor.service.runs import ModelPool, execute_run
from monitor.store import Store
from tests.conftest import TinyModels

WORDS = ["refund", "crash", "login", "parcel", "invoice", "password", "screen", "address", "charge", "email"]
CHOICES = ["billing", "technical", "account", "shipping"]


def perturbed(adapter: Path, out: Path, scale: float, seed: int = 0) -> Path:
    """A copy of ``adapter`` whose LoRA B matrices get Gaussian noise of ``scale`` times their own spread."""
    shutil.copytree(adapter, out)
    weights_file = out / "adapter_model.safetensors"
    weights = load_file(weights_file)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if "lora_B" in name:
            noise = torch.randn(tensor.shape, generator=generator) * tensor.std() * scale
            weights[name] = tensor + noise
    save_file(weights, weights_file)
    return out


@pytest.fixture(scope="module")
def evalset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("evals") / "routing"
    path.mkdir()
    (path / "evalset.yaml").write_text(
        f'name: routing\ntask: multiple_choice\nprompt: "Ticket: {{input}}\\nCategory:"\nchoices: {json.dumps(CHOICES)}\n'
    )
    (path / "data.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "id": f"i{k}",
                    "input": f"{WORDS[k % 10]} {WORDS[(k * 3) % 10]} {WORDS[(k * 7) % 10]}",
                    "target": CHOICES[k % 4],
                }
            )
            + "\n"
            for k in range(120)
        )
    )
    return path


@pytest.mark.parametrize(("scale", "detected"), [(1e-6, False), (3.0, True)])
def test_perturbed_adapter_changes_behaviour(
    tiny_models: TinyModels, evalset: Path, tmp_path: Path, scale: float, detected: bool
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    es = load_evalset(evalset)
    pool = ModelPool(max_models=2)
    baseline_run = execute_run(
        store, pool, RunPlan("router", ModelSpec("hf", str(tiny_models.gpt2), str(tiny_models.lora)), es, 0)
    )
    assert baseline_run.status == "succeeded"
    pin_baseline(store, tmp_path / "baselines", "router", "routing", baseline_run.id)
    changed = perturbed(tiny_models.lora, tmp_path / "lora-perturbed", scale)
    run = execute_run(
        store, pool, RunPlan("router", ModelSpec("hf", str(tiny_models.gpt2), str(changed)), es, 0)
    )
    pool.close()
    analysis = analyze_run(store, run.id, tmp_path / "baselines", AnalysisPolicy(min_agreement=0.97))  # type: ignore[arg-type]
    behaviour = next(f for f in analysis.findings if f.kind == "behaviour")
    fingerprint = next(f for f in analysis.findings if f.source == "fingerprint")
    # new weights under the same (unset) model version: the integrity canary sees them either way
    assert fingerprint.drifted
    assert behaviour.drifted is detected, (behaviour.score, behaviour.reason)
    if not detected:
        assert behaviour.score == 1.0
    store.close()
