"""The CPU memory probe counts live tensor bytes exactly, and a training run's peak is its own."""

import io
import math
import os
from types import SimpleNamespace

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


def test_the_load_meter_counts_other_processes_cpu_time_and_not_its_own(monkeypatch):
    """LoadMeter's arithmetic on scripted clocks (a test that spun a real second process asserted on the
    machine's load, which any other job on the machine moves): other cores = (the machine's busy CPU
    seconds - this process's) / wall seconds, never below 0."""
    from bench import cost

    def scripted(machine: list[float], own: list[float], wall: list[float]) -> float:
        clocks = {"machine": iter(machine), "own": iter(own), "wall": iter(wall)}
        monkeypatch.setattr(cost, "machine_cpu_seconds", lambda: next(clocks["machine"]))
        # cost's own clock module only: patching time itself would stop pytest's clocks too.
        monkeypatch.setattr(cost, "time", SimpleNamespace(process_time=lambda: next(clocks["own"]), perf_counter=lambda: next(clocks["wall"])))
        with cost.LoadMeter() as meter:
            pass
        return meter.other_cores

    # 2 s of wall time: the machine spent 3 CPU seconds, this process 1 of them -> one other core busy.
    assert scripted([100.0, 103.0], [5.0, 6.0], [10.0, 12.0]) == pytest.approx(1.0)
    # All the machine's work was this process's own: nobody else.
    assert scripted([100.0, 101.5], [5.0, 6.5], [10.0, 12.0]) == pytest.approx(0.0)
    # /proc/stat counts whole 10 ms ticks: a machine total a tick short of our own is 0, not negative.
    assert scripted([100.0, 100.99], [5.0, 6.0], [10.0, 11.0]) == 0.0
    # No wall time: no rate.
    assert math.isnan(scripted([1.0, 1.0], [1.0, 1.0], [3.0, 3.0]))


def test_machine_cpu_seconds_reads_the_busy_time_of_proc_stat(tmp_path, monkeypatch):
    """Busy = user + nice + system + irq + softirq + steal (the first eight fields but idle and iowait),
    in clock ticks, over SC_CLK_TCK."""
    from bench import cost

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here (the load is recorded as NaN)")
    line = "cpu  100 20 30 4000 50 6 7 8 9 10\n"
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(line) if path == "/proc/stat" else real_open(path, *a, **k))
    assert cost.machine_cpu_seconds() == pytest.approx((100 + 20 + 30 + 6 + 7 + 8) / os.sysconf("SC_CLK_TCK"))
