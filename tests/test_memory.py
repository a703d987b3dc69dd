"""The CPU memory probe counts live tensor bytes exactly, and a training run's peak is its own."""

import os

import pytest
import torch

from bench.memory import TensorPeak, module_bytes, module_storages, process_peak_rss_mib, reset_process_peak_rss


def test_peak_counts_live_tensors_and_frees():
    probe = TensorPeak(baseline_bytes=1000)
    probe.start()
    a = torch.ones(1024, dtype=torch.float32)  # 4 KiB
    b = torch.ones(2048, dtype=torch.float32)  # 8 KiB: 12 KiB live
    del a
    c = torch.ones(512, dtype=torch.float32)  # 2 KiB: 10 KiB live, the peak stays 12 KiB
    probe.stop()
    assert probe.peak == 12 * 1024 and probe.peak_bytes == 12 * 1024 + 1000
    assert probe.live == 10 * 1024
    del b
    assert probe.live == 2 * 1024  # frees still count after stop()
    d = torch.ones(10_000)  # not watched any more
    assert probe.peak == 12 * 1024 and c.numel() and d.numel()


def test_views_share_their_storage():
    probe = TensorPeak()
    probe.start()
    x = torch.zeros(256)
    views = [x[:10], x.view(16, 16), x.t() if x.dim() == 2 else x.unsqueeze(0)]
    probe.stop()
    assert probe.peak == 256 * 4 and len(views) == 3


def test_training_like_step_matches_a_hand_count():
    """A linear layer's step with AdamW: gradients and two moment buffers, all sized like the weight."""
    layer = torch.nn.Linear(64, 64, bias=False)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True)
    weight = 64 * 64 * 4
    assert module_bytes(layer) == weight
    probe = TensorPeak(module_bytes(layer), known=module_storages(layer))
    probe.start()
    x = torch.randn(8, 64)
    layer(x).square().mean().backward()
    opt.step()
    probe.stop()
    # weight + grad + exp_avg + exp_avg_sq, plus batch-sized buffers (input, output, its square and their
    # gradients: 8 x 64 floats = 2 KiB each) and scalars: fewer than ten such buffers.
    batch_buffer = 8 * 64 * 4
    assert 4 * weight + batch_buffer <= probe.peak_bytes < 4 * weight + 10 * batch_buffer


def test_a_view_of_a_weight_already_counted_allocates_nothing():
    """F.linear transposes its weight and autograd detaches it: views of the baseline's storages, which
    an earlier probe counted as new tensors (a 16 KiB layer read as 32 KiB)."""
    layer = torch.nn.Linear(64, 64, bias=False)
    probe = TensorPeak(module_bytes(layer), known=module_storages(layer))
    probe.start()
    views = [layer.weight.t(), layer.weight.detach(), layer.weight.data.to(torch.float32)]
    probe.stop()
    assert probe.peak == 0 and probe.peak_bytes == 64 * 64 * 4 and len(views) == 3


def test_process_peak_rss_resets_where_linux_allows():
    if not reset_process_peak_rss():
        return  # not Linux: the reset is documented as unavailable
    before = process_peak_rss_mib()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB touched
    big += 1
    assert process_peak_rss_mib() >= before + 50
    del big
    reset_process_peak_rss()
    assert process_peak_rss_mib() < before + 50


def test_the_load_meter_sees_another_busy_process_and_not_its_own_work():
    import subprocess
    import sys
    import time

    from bench.cost import LoadMeter

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    from bench.provenance import usable_cores

    if not os.path.exists("/proc/stat") or usable_cores() < 2:
        pytest.skip("needs /proc/stat (elsewhere the load is recorded as NaN) and a second core for the busy process")
    with LoadMeter() as alone:
        spin(1.0)
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # the child is spinning by now
        with LoadMeter() as shared:
            spin(1.0)
    finally:
        busy.wait()
    # Whatever else this machine runs adds to both; the busy process adds about one core.
    assert shared.other_cores - alone.other_cores > 0.6, (alone.other_cores, shared.other_cores)
