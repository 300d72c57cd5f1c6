"""The PyTorch reference that `lejepa bench` runs side by side with lejepa.

The same LeJEPA step written the way the official code and MINIMAL.md write it: a timm backbone,
a torchvision MLP projector, MINIMAL.md's SIGReg (with the library's step-seeded directions),
Algorithm 2's loss, torch.optim.AdamW, bf16 through torch.autocast; and for the whole pipeline a
torchvision v2 multi-crop transform behind a DataLoader with workers.

  python benches/reference/lejepa_step.py model --arch vit --precision f32 --batch 128 --reps 5 --steps 3
  python benches/reference/lejepa_step.py model --arch vit-small-patch16 --in-chans 3 --global-size 224 --local-size 96 \
      --local-views 6 --embedding-dim 512 --projector 2048,2048,64 --slices 1024 --drop-path 0.1 --batch 8 --compile
  python benches/reference/lejepa_step.py sigreg --n 1024 --m 1024 --views 8 --reps 5
  python benches/reference/lejepa_step.py pipeline --arch vit --batch 128 --steps 20 --workers 2
  python benches/reference/lejepa_step.py views --batch 128 --batches 20 --workers 2
  python benches/reference/lejepa_step.py train --seconds 1800 --epochs 3 --out runs/reference

`train` pretrains with lejepa's cpu-small recipe for a wall-clock budget (RESULTS.md's equal-time
comparison) and saves the timm backbone as safetensors every --save-every seconds, for
`lejepa probe --checkpoint FILE --arch vit-tiny-patch4-depth6`. SIGUSR1 ends it after the current step,
with the backbone saved, so that a side-by-side run can stop it when lejepa's run ends.

Prints one JSON line: per-repetition throughput, FLOPs of one step (FlopCounterMode; also of lejepa's
step, whose ViT computes its last block at the class token alone), peak memory.
"""
import argparse, gzip, json, os, resource, signal, time

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count
import timm
import torchvision
from torchvision.transforms import v2


import ctypes
_libc = ctypes.CDLL("libc.so.6")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MALLOC = "glibc"  # --malloc


def run_fast():
    """The allocator settings for the timed steps. glibc: its dynamic steady state (buffers above
    32 MiB mapped afresh, the heap trimmed above 64 MiB free), what any PyTorch program runs with;
    set explicitly because peak_growth fixes the threshold. lejepa: src/train/memory.rs's run_fast
    (every buffer from the heap, never trimmed)."""
    if MALLOC == "lejepa":
        _libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        _libc.mallopt(M_MMAP_MAX, 0)
    else:  # M_MMAP_MAX keeps glibc's default in this mode
        _libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        _libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


def measure_settings():
    """lejepa's measure_live_memory: large buffers mapped and returned on free. Set before the
    warm-up steps too, or they leave free heap chunks that the measured step reuses and keeps."""
    _libc.mallopt(M_MMAP_MAX, 65536)
    _libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    _libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024)


def peak_growth(fn, device="cpu"):
    """Peak bytes of fn() above those in use before it: resident memory (Linux /proc) on the CPU,
    measured with glibc returning freed buffers (a low fixed mmap threshold, as lejepa does), then
    back to the running settings; the caching allocator's peak on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        run_fast()  # the warm-up steps before may have run under the measuring settings
        return torch.cuda.max_memory_allocated() - before
    measure_settings()
    _libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss = lambda field: int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
    before = rss("VmRSS:")
    fn()
    growth = rss("VmHWM:") - before
    run_fast()
    return growth


# FlopCounterMode counts the GPU's fused attention kernels but not the CPU's: the same formulas for those,
# so that a step's FLOPs (and its share of the GEMM peak) include attention on either device.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def cpu_attention_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class SIGReg(nn.Module):
    """MINIMAL.md's SIGReg; directions from a generator seeded by the step, as the library does."""

    def __init__(self, knots=17, t_max=3.0, slices=256):
        super().__init__()
        t = torch.linspace(0, t_max, knots, dtype=torch.float32)
        dt = t_max / (knots - 1)
        weights = torch.full((knots,), 2 * dt, dtype=torch.float32)
        weights[[0, -1]] = dt
        window = torch.exp(-t.square() / 2.0)
        self.slices = slices
        self.register_buffer("t", t)
        self.register_buffer("phi", window)
        self.register_buffer("weights", weights * window)

    def forward(self, proj, step):
        g = torch.Generator(device=proj.device).manual_seed(step)
        A = torch.randn(proj.size(-1), self.slices, device=proj.device, generator=g)
        A = A.div_(A.norm(p=2, dim=0))
        x_t = (proj @ A).unsqueeze(-1) * self.t
        err = (x_t.cos().mean(-3) - self.phi).square() + x_t.sin().mean(-3).square()
        statistic = (err @ self.weights) * proj.size(-2)
        return statistic.mean()


def backbone(arch, in_chans, img_size, embedding_dim=0, drop_path=0.0):
    """lejepa's network of that name in timm; `embedding_dim` > 0 adds timm's linear head (the official
    recipes' 512-d embedding, lejepa's projector.embedding)."""
    if arch in ("vit", "vit-tiny-patch4-depth6"):
        return timm.models.vision_transformer.VisionTransformer(
            img_size=img_size, patch_size=4, in_chans=in_chans, num_classes=embedding_dim, embed_dim=192, depth=6,
            num_heads=3, dynamic_img_size=True, drop_path_rate=drop_path)
    if arch == "vit-small-patch16":
        return timm.create_model("vit_small_patch16_224", img_size=img_size, in_chans=in_chans, num_classes=embedding_dim,
                                 dynamic_img_size=True, drop_path_rate=drop_path)
    if arch == "resnet50":
        return timm.create_model("resnet50", in_chans=in_chans, num_classes=embedding_dim, drop_path_rate=drop_path)
    # lejepa's resnet18-small[-stride2]: a 3×3 stem, no max-pool
    model = timm.create_model("resnet18", num_classes=embedding_dim, in_chans=in_chans, drop_path_rate=drop_path)
    model.conv1 = nn.Conv2d(in_chans, 64, 3, 2 if arch in ("resnet-stride2", "resnet18-small-stride2") else 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


class LeJEPA(nn.Module):
    def __init__(self, arch, in_chans, img_size, projector=(512, 512, 64), lamb=0.05, slices=256, embedding_dim=0, drop_path=0.0):
        super().__init__()
        self.backbone = backbone(arch, in_chans, img_size, embedding_dim, drop_path)
        self.projector = torchvision.ops.MLP(embedding_dim or self.backbone.num_features, list(projector), norm_layer=nn.BatchNorm1d)
        self.sigreg = SIGReg(slices=slices)
        self.lamb = lamb

    def loss(self, global_views, local_views, n, step, bf16):
        with torch.autocast(global_views.device.type, dtype=torch.bfloat16, enabled=bf16):
            emb = [self.backbone(global_views)] + ([self.backbone(local_views)] if local_views is not None else [])
            z = self.projector(torch.cat(emb))
        z = z.float().view(-1, n, z.size(-1))
        vg = global_views.size(0) // n
        inv = (z[:vg].mean(0) - z).square().mean()  # Algorithm 2: all views predict the global centre
        return (1 - self.lamb) * inv + self.lamb * self.sigreg(z, step)


def class_token_last_block(vit):
    """lejepa's ViT computes its last block at the class token alone (BENCHMARKS.md, change 18): the
    same embedding with fewer products. This patches timm's last block the same way, for one purpose:
    counting lejepa's step with the same FlopCounterMode. It is never timed."""
    block, attn = vit.blocks[-1], vit.blocks[-1].attn

    def forward(x):
        B, T, C = x.shape
        heads = attn.num_heads
        h = block.norm1(x)
        w, b = attn.qkv.weight, attn.qkv.bias  # rows: q, then k, then v
        q = torch.nn.functional.linear(h[:, :1], w[:C], b[:C]).reshape(B, 1, heads, C // heads).transpose(1, 2)
        k, v = torch.nn.functional.linear(h, w[C:], b[C:]).reshape(B, T, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C)
        x = x[:, :1] + block.ls1(attn.proj(o))  # no drop path: this block only counts FLOPs
        return x + block.ls2(block.mlp(block.norm2(x)))

    block.forward = forward


def model_step_bench(a):
    torch.manual_seed(0)
    shape = dict(projector=a.projector, slices=a.slices, embedding_dim=a.embedding_dim, drop_path=a.drop_path)
    model = LeJEPA(a.arch, a.in_chans, a.global_size, **shape).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    n = a.batch
    g = torch.randn(a.global_views * n, a.in_chans, a.global_size, a.global_size, device=a.device)
    l = torch.randn(a.local_views * n, a.in_chans, a.local_size, a.local_size, device=a.device) if a.local_views else None
    bf16 = a.precision == "bf16"

    def step(i):
        loss = model.loss(g, l, n, i, bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(a.device)

    flops = lejepa_flops = compiling = None
    if a.skip_memory:  # a later round of the same row: time only (the first round counted the FLOPs)
        step(0)
    else:
        measure_settings()
        counter = FlopCounterMode(display=False)
        with counter:  # eager, also with --compile: the same network's FLOPs
            step(0)
        flops = lejepa_flops = counter.get_total_flops()
        if a.arch.startswith("vit"):  # the same step with lejepa's last block, forward and backward, counted only
            counting = LeJEPA(a.arch, a.in_chans, a.global_size, **shape).to(a.device)
            counting.load_state_dict(model.state_dict())
            class_token_last_block(counting.backbone)
            model.eval(), counting.eval()  # no drop path: the patched block must compute what timm's computes
            with torch.no_grad():
                same = torch.allclose(counting.backbone(g[:4]), model.backbone(g[:4]), rtol=1e-4, atol=1e-5)
            assert same, "class_token_last_block changed the embedding"
            model.train(), counting.train()
            with FlopCounterMode(display=False) as lejepa_counter:
                counting.loss(g, l, n, 0, bf16).backward()
            lejepa_flops = lejepa_counter.get_total_flops()
            del counting
    if a.compile:  # what a performance-minded user tries first: the networks compiled, one graph per crop size
        model.backbone = torch.compile(model.backbone, dynamic=False)
        model.projector = torch.compile(model.projector, dynamic=False)
        t0 = time.perf_counter()
        step(0)  # compiles the forward and backward graphs of both crop sizes (the warm-up steps below run compiled)
        compiling = time.perf_counter() - t0
    step(1)
    times = []
    memory = None if a.skip_memory else peak_growth(lambda: step(2), a.device)
    step(3)  # settles the running allocator settings before timing
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for r in range(a.reps):
        t0 = time.perf_counter()
        for i in range(a.steps):
            step(4 + r * a.steps + i)
        times.append((time.perf_counter() - t0) / a.steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / (a.reps * a.steps)
    if a.profile:  # one more step under the operator profiler, as `lejepa bench --profile` records ours
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step(4 + a.reps * a.steps)
        prof.export_chrome_trace(a.profile)
    return {"images_per_second": [n / t for t in times], "step_seconds": times, "flops_per_step": flops,
            "lejepa_flops_per_step": lejepa_flops, "compile_seconds": compiling,
            "peak_bytes": memory, "page_faults_per_step": faults}


def sigreg_bench(a):
    torch.manual_seed(0)
    sig = SIGReg(slices=a.m).to(a.device)
    z = torch.randn(a.views, a.n, a.dim, device=a.device, requires_grad=True)

    def run(i):
        sig(z, i).backward()
        sync(a.device)

    measure_settings()
    warm_up, step = time.perf_counter(), 0
    while step == 0 or time.perf_counter() - warm_up < 0.2:  # at least 0.2 s, as lejepa bench does
        run(step)
        step += 1
    memory = peak_growth(lambda: run(step), a.device)
    times = []
    for r in range(a.reps):
        t0 = time.perf_counter()
        run(step + 1 + r)
        times.append(time.perf_counter() - t0)
    return {"seconds": times, "peak_bytes": memory}


def read_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, rows, cols).copy())


class MultiCrop(torch.utils.data.Dataset):
    """The official README's recipe in torchvision v2 (grayscale: brightness/contrast jitter only)."""

    def __init__(self, images, a, mean, std):
        self.images = images

        def view(size, scale):
            return v2.Compose([
                v2.RandomResizedCrop(size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8),
                v2.RandomApply([v2.GaussianBlur(max(3, (size // 10) | 1), sigma=(0.1, 2.0))], p=0.5),
                v2.RandomSolarize(128, p=0.2),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([mean], [std]),
            ])

        self.global_view, self.local_view = view(a.global_size, a.global_scale), view(a.local_size, a.local_scale)
        self.vg, self.vl = a.global_views, a.local_views

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        return [self.global_view(img) for _ in range(self.vg)], [self.local_view(img) for _ in range(self.vl)]


class PngFiles(torch.utils.data.Dataset):
    """Image files decoded when an item is asked for, as an ImageFolder or a Hugging Face dataset does."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torchvision.io.decode_image(self.paths[i], mode=torchvision.io.ImageReadMode.GRAY)


class JpegFolder(torch.utils.data.Dataset):
    """A folder of colour photos as torchvision users load it: PIL decode, then the official README's
    recipe on the PIL image (RandomResizedCrop, flip, ColorJitter(0.4, 0.4, 0.2, 0.1), grayscale, blur,
    solarize), then to a normalised tensor."""

    def __init__(self, folder, a):
        self.paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))

        def view(size, scale):
            return v2.Compose([
                v2.RandomResizedCrop(size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                v2.RandomApply([v2.GaussianBlur(max(3, (size // 10) | 1), sigma=(0.1, 2.0))], p=0.5),
                v2.RandomSolarize(128, p=0.2),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.5] * 3, [0.5] * 3),
            ])

        self.global_view, self.local_view = view(a.global_size, a.global_scale), view(a.local_size, a.local_scale)
        self.vg, self.vl = a.global_views, a.local_views

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        img = Image.open(self.paths[i]).convert("RGB")
        return [self.global_view(img) for _ in range(self.vg)], [self.local_view(img) for _ in range(self.vl)]


def elpv_files():
    """The ELPV cells that scripts/setup --elpv unpacks (the same places lejepa looks)."""
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    roots = [os.environ.get("LEJEPA_DATA"), "data", os.path.join(repo, "data")]
    for root in filter(None, roots):
        folder = os.path.join(root, "elpv", "elpv_dataset", "data")
        if os.path.exists(os.path.join(folder, "labels.csv")):
            return [os.path.join(folder, line.split()[0]) for line in open(os.path.join(folder, "labels.csv")) if line.strip()]
    raise SystemExit("ELPV is not installed: run scripts/setup --elpv")


def loader(a):
    if a.folder:
        return torch.utils.data.DataLoader(JpegFolder(a.folder, a), batch_size=a.batch, shuffle=True, drop_last=True,
                                           num_workers=a.workers, persistent_workers=a.workers > 0)
    if a.data == "elpv":
        images = PngFiles(elpv_files())
        sample = torch.stack([images[i] for i in range(64)]).float().div(255)
    else:
        images = read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
        sample = images[:5000].float().div(255)
    mean, std = sample.mean().item(), sample.std().item()
    return torch.utils.data.DataLoader(MultiCrop(images, a, mean, std), batch_size=a.batch, shuffle=True, drop_last=True,
                                       num_workers=a.workers, persistent_workers=a.workers > 0)


def views_bench(a):
    it = iter(loader(a))
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(a.batches):
        next(it)
    elapsed = time.perf_counter() - t0
    return {"views_per_second": a.batches * a.batch * (a.global_views + a.local_views) / elapsed}


def pipeline_bench(a):
    torch.manual_seed(0)
    model = LeJEPA(a.arch, 1, a.global_size).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    opened = time.perf_counter()
    it = iter(loader(a))
    bf16 = a.precision == "bf16"
    wait = 0.0
    t0 = None
    for i in range(a.steps + 1):
        if i == 1:
            t0, wait = time.perf_counter(), 0.0  # first step: worker start-up, excluded
        w0 = time.perf_counter()
        g, l = next(it)
        wait += time.perf_counter() - w0
        g, l = torch.cat(g).to(a.device), (torch.cat(l).to(a.device) if l else None)  # view-major, as lejepa's loader
        loss = model.loss(g, l, a.batch, i, bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(a.device)
    elapsed = time.perf_counter() - t0
    return {"images_per_second": a.steps * a.batch / elapsed, "data_wait_fraction": wait / elapsed,
            "end_to_end_images_per_second": (a.steps + 1) * a.batch / (time.perf_counter() - opened)}


def learning_rate(step, total, warmup, peak, final_ratio=1e-3):
    """lejepa's schedule (src/train/schedule.rs): linear warm-up, cosine to peak × final_ratio."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    floor = peak * final_ratio
    return floor + 0.5 * (peak - floor) * (1 + np.cos(np.pi * progress))


def train(a):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = LeJEPA(a.arch, 1, a.global_size, lamb=a.lamb)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    data = loader(a)
    total = len(data) * a.epochs
    warmup = round(0.1 * len(data))
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "metrics.jsonl"), "w")
    t0 = time.perf_counter()
    next_save, step, done, saved_at = a.save_every, 0, False, None
    stop_requested = []  # set by SIGUSR1; checked between steps, never inside one
    signal.signal(signal.SIGUSR1, lambda *_: stop_requested.append(True))

    def save(elapsed):
        nonlocal saved_at
        saved_at = step
        path = os.path.join(a.out, f"backbone-{round(elapsed)}s.safetensors")
        save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, path)
        log.write(json.dumps({"step": step, "seconds": elapsed, "backbone": path}) + "\n")
        log.flush()

    for epoch in range(a.epochs):
        for g, l in data:
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, total, warmup, a.lr)
            g, l = torch.cat(g), (torch.cat(l) if l else None)
            loss = model.loss(g, l, a.batch, step, a.precision == "bf16")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed = time.perf_counter() - t0
            log.write(json.dumps({"step": step, "seconds": elapsed, "loss": loss.item()}) + "\n")
            if elapsed >= next_save:
                save(elapsed)
                next_save += a.save_every
            if elapsed >= a.seconds or step >= total or stop_requested:
                done = True
                break
        if done:
            break
    if saved_at != step:
        save(time.perf_counter() - t0)
    return {"steps": step, "seconds": time.perf_counter() - t0, "out": a.out}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["model", "sigreg", "pipeline", "views", "train"])
    p.add_argument("--arch", default="vit", choices=["vit", "resnet", "resnet-stride2", "vit-tiny-patch4-depth6", "resnet18-small",
                                                      "resnet18-small-stride2", "vit-small-patch16", "resnet50"],
                   help="lejepa's network of that name (vit, resnet, resnet-stride2: the 28-px ones)")
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--embedding-dim", type=int, default=0, help="model: a linear embedding layer before the projector (0: none)")
    p.add_argument("--projector", type=lambda text: [int(x) for x in text.split(",")], default=[512, 512, 64])
    p.add_argument("--slices", type=int, default=256, help="model: SIGReg's directions")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--compile", action="store_true", help="model: torch.compile the backbone and the projector")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--global-views", type=int, default=2)
    p.add_argument("--local-views", type=int, default=4)
    p.add_argument("--global-size", type=int, default=28)
    p.add_argument("--local-size", type=int, default=12)
    scales = lambda text: tuple(float(x) for x in text.split(","))  # "0.3,1" → (0.3, 1.0), as lejepa's flags
    p.add_argument("--global-scale", type=scales, default=(0.3, 1.0), help="global crops' area, fractions of the image")
    p.add_argument("--local-scale", type=scales, default=(0.05, 0.3), help="local crops' area, fractions of the image")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--skip-memory", action="store_true", help="model: time only, no memory or FLOP count (a later round of the same row)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--data", choices=["fashion-mnist", "elpv"], default="fashion-mnist", help="pipeline and views: the images")
    p.add_argument("--folder", help="views: a folder of .jpg photos instead of --data")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="model and sigreg: cpu or cuda")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1800, help="train: wall-clock budget")
    p.add_argument("--save-every", type=float, default=600, help="train: seconds between saved backbones")
    p.add_argument("--epochs", type=int, default=3, help="train: the schedule's length")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lamb", type=float, default=0.05)
    p.add_argument("--out", default="runs/reference")
    p.add_argument("--profile", help="model: save a profiled step's Chrome trace here")
    p.add_argument("--malloc", choices=["glibc", "lejepa"], default="glibc", help="allocator settings of the timed steps")
    a = p.parse_args()
    MALLOC = a.malloc
    torch.set_num_threads(a.threads)
    if a.mode != "train":
        run_fast()  # peak_growth changes them; the timed steps run with these
    modes = {"model": model_step_bench, "sigreg": sigreg_bench, "pipeline": pipeline_bench, "views": views_bench, "train": train}
    result = modes[a.mode](a)
    result["torch"] = torch.__version__
    print(json.dumps(result))
