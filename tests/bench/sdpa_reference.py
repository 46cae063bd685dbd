#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the decode shapes of
tests/bench/bench_attention.c, the baseline its paged kernel is held to
(issue: at least 0.9x SDPA's speed).

Same shapes: 32 query heads over 8 KV heads of 128, f16, one query per
sequence, B sequences of CTX cached positions (1 x 8192, 8 x 4096,
64 x 1024, 64 x 4096). SDPA gets contiguous K/V (PyTorch has no paged
cache) in two forms, and the faster counts: GQA as is (enable_gqa=True),
and K/V repeated to 32 heads (what its flash and memory-efficient kernels
take on older versions; the repeat is outside the timing). Times are CUDA
events around each call, median of 200 after 20 warm-ups, on fresh random
inputs (never zeros). Prints "sdpa B x CTX: M ms, G GB/s" per shape, the
bytes being the K/V the call must read at 8 KV heads.

Runs where torch sees a GPU (the lent machine's python3); exits 77 without.
"""
import sys


def main() -> int:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("sdpa_reference: no torch here (SKIP)")
        return 77
    if not torch.cuda.is_available():
        print("sdpa_reference: torch sees no GPU (SKIP)")
        return 77
    dev = torch.device("cuda")
    n_heads, n_kv, hd = 32, 8, 128
    shapes = [(1, 8192), (8, 4096), (64, 1024), (64, 4096)]
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for b, ctx in shapes:
        g = torch.Generator(device=dev).manual_seed(b * 100003 + ctx)
        q = torch.rand(b, n_heads, 1, hd, device=dev, dtype=torch.float16, generator=g) * 2 - 1
        k = torch.rand(b, n_kv, ctx, hd, device=dev, dtype=torch.float16, generator=g) * 2 - 1
        v = torch.rand(b, n_kv, ctx, hd, device=dev, dtype=torch.float16, generator=g) * 2 - 1
        kr = k.repeat_interleave(n_heads // n_kv, dim=1)
        vr = v.repeat_interleave(n_heads // n_kv, dim=1)
        forms = {}

        def gqa():
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

        def repeated():
            return F.scaled_dot_product_attention(q, kr, vr)

        for label, fn in (("gqa", gqa), ("repeated", repeated)):
            try:
                ref = fn()
            except (TypeError, RuntimeError) as e:  # enable_gqa needs torch 2.5
                print(f"# {label}: {e}")
                continue
            if not torch.isfinite(ref).all():
                print(f"# {label}: non-finite output")
                continue
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(200):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e))
            times.sort()
            forms[label] = times[len(times) // 2]
        if not forms:
            print(f"sdpa {b} x {ctx}: no form ran")
            continue
        best = min(forms, key=forms.get)
        ms = forms[best]
        kv_bytes = 2 * b * ctx * n_kv * hd * 2
        detail = ", ".join(f"{k} {v:.4f}" for k, v in forms.items())
        print(f"sdpa {b} x {ctx}: {ms:.4f} ms, {kv_bytes / ms / 1e6:.1f} GB/s ({best}; {detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
