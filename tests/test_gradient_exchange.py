"""The factored / bfloat16 gradient exchange (trainer/allreduce.py) against the optimizer's own float32
all-reduce, in two real MultiWorkerMirroredStrategy processes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO


def _model(**fields):
    from xray.trainer.config import ModelConfig
    from xray.trainer.model import build_model

    return build_model(ModelConfig(weights="none", **fields))


def test_the_documented_heads_kernel_is_factored_at_224_px():
    from xray.trainer.allreduce import factorable_dense

    dense = factorable_dense(_model(image_size=224), global_batch=16)
    assert dense is not None and dense.name == "dense1"
    fan_in, fan_out = dense.kernel.shape
    assert (fan_in, fan_out) == (7 * 7 * 2048, 256)
    # 16 rows of (in + out) values instead of in x out: ~16x fewer numbers between workers.
    assert fan_in * fan_out / (16 * (fan_in + fan_out)) > 15


def test_factoring_is_skipped_where_it_saves_little():
    from xray.trainer.allreduce import factorable_dense

    # 32 px: Flatten gives 2048 features; a 16-unit layer at batch 4 would save less than MIN_SAVING.
    assert factorable_dense(_model(image_size=32, dense1_units=16, dense2_units=8), global_batch=4) is None
    # A huge global batch makes the rows bigger than the kernel.
    assert factorable_dense(_model(image_size=64), global_batch=4096) is None


def test_float16_loss_scaling_keeps_the_optimizers_own_aggregation():
    from xray.trainer.config import Config, ConfigError, RuntimeConfig, TrainConfig
    from xray.trainer.train import exchange_gradients

    model = _model(image_size=64)
    float16 = Config(train=TrainConfig(mixed_precision="float16"))
    assert exchange_gradients(model, float16) is model
    with pytest.raises(ConfigError, match="gradient_allreduce=bfloat16 does not combine with mixed_precision=float16"):
        exchange_gradients(model, Config(train=float16.train, runtime=RuntimeConfig(gradient_allreduce="bfloat16")))
    wrapped = exchange_gradients(model, Config())
    assert wrapped is not model and wrapped.exchange.factored_layer == "dense1"
    # The view that exposes the head's input/output shares the layers and is not tracked twice.
    assert len(wrapped.weights) == len(model.weights)


@pytest.mark.slow
def test_factored_exchange_matches_the_optimizers_allreduce(tmp_path, reserved_ports):
    ports = ",".join(map(str, reserved_ports(2)))
    out = tmp_path / "changes.json"
    script = str(REPO / "tests" / "gradient_exchange_worker.py")
    workers = [subprocess.Popen([sys.executable, script, str(i), ports, str(out)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)

    result = json.loads(out.read_text())
    assert result["factored"] == {"factored": "dense1", "factored_bf16": "dense1"}
    reference, factored, bf16 = (result["changes"][k] for k in ("optimizer", "factored", "factored_bf16"))
    assert set(reference) == set(factored) == set(bf16)
    kernel = next(name for name in reference if "dense1" in name and "kernel" in name)
    assert np.abs(np.array(reference[kernel])).max() > 1e-4  # the factored kernel really was trained
    for name, change in reference.items():
        change = np.array(change)
        scale = np.abs(change).max() + 1e-12
        # Exact up to float32 summation order.
        np.testing.assert_allclose(np.array(factored[name]), change, rtol=0, atol=1e-5 * scale, err_msg=name)
        # bfloat16 keeps 8 bits of mantissa for the all-reduced gradients (the gathered factors stay float32).
        np.testing.assert_allclose(np.array(bf16[name]), change, rtol=0, atol=2e-2 * scale, err_msg=name)
