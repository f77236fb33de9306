#!/usr/bin/python3
"""Times the course's PyTorch model (../shared/reference/course_ref.py, imported, not copied)
the way `spritediffd bench` times ours, for scripts/bench-reference.sh. Prints one JSON line.
Guided sampling runs the conditional and unconditional halves in one forward of 2B rows, as
spritediffd does; the step arithmetic is the course's DDIM update."""
import argparse, json, os, sys, time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "shared", "reference"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import course_ref as ref  # noqa: E402


def ddim(model, n, steps, ctx, guidance):
    x = torch.randn(n, 3, ref.height, ref.height)
    stride = ref.timesteps // steps
    for i in range(ref.timesteps, 0, -stride):
        t = torch.full((n, 1, 1, 1), i / ref.timesteps)
        if guidance == 1:
            eps = model(x, t, c=ctx)
        else:
            both = model(torch.cat([x, x]), torch.cat([t, t]), c=torch.cat([ctx, torch.zeros_like(ctx)]))
            cond, uncond = both[:n], both[n:]
            eps = uncond + guidance * (cond - uncond)
        x = ref.denoise_ddim(x, i, i - stride, eps)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="32,64")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--train-batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--sample-repeats", type=int, default=1, help="timed sampling runs per measure; the median counts")
    a = ap.parse_args()
    if a.sample_repeats < 1:
        ap.error("--sample-repeats must be at least 1")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ref.ContextUnet(3, ref.n_feat, ref.n_cfeat, ref.height).eval()
    out = {"torch": torch.__version__, "threads": a.threads, "steps": a.steps}
    with torch.no_grad():
        # Batch-1 step latency: one conditional forward plus the update, as one request's step.
        x = torch.randn(1, 3, ref.height, ref.height)
        ctx1 = F.one_hot(torch.tensor([2]), ref.n_cfeat).float()
        t = torch.full((1, 1, 1, 1), 0.5)
        for _ in range(5):
            ref.denoise_ddim(x, 250, 230, model(x, t, c=ctx1))
        t0 = time.perf_counter()
        for _ in range(a.repeats * 5):
            ref.denoise_ddim(x, 250, 230, model(x, t, c=ctx1))
        out["step_ms_batch1"] = round((time.perf_counter() - t0) / (a.repeats * 5) * 1e3, 3)
        for b in [int(v) for v in a.batches.split(",")]:
            ctx = F.one_hot(torch.arange(b) % ref.n_cfeat, ref.n_cfeat).float()
            for g in (1.0, 2.0):
                ddim(model, b, a.steps, ctx, g)  # warm-up
                runs = []
                for _ in range(a.sample_repeats):
                    t0 = time.perf_counter()
                    ddim(model, b, a.steps, ctx, g)
                    runs.append(time.perf_counter() - t0)
                s = sorted(runs)[len(runs) // 2]  # the median, as spritediffd bench --sample-repeats
                key = "ddim_samples_per_s" if g == 1 else "ddim_guided_samples_per_s"
                out.setdefault(key, {})[str(b)] = round(b / s, 2)
    # Training: the course's step (MSE on the noise, Adam), timed like spritediffd bench's.
    trained = ref.ContextUnet(3, ref.n_feat, ref.n_cfeat, ref.height).train()
    opt = torch.optim.Adam(trained.parameters(), lr=1e-3)
    n = a.train_batch
    xb = torch.randn(n, 3, ref.height, ref.height)
    cb = F.one_hot(torch.randint(0, ref.n_cfeat, (n,)), ref.n_cfeat).float()

    def step():
        opt.zero_grad()
        noise = torch.randn_like(xb)
        tt = torch.randint(1, ref.timesteps + 1, (n,))
        loss = F.mse_loss(trained(ref.perturb_input(xb, tt, noise), (tt / ref.timesteps)[:, None, None, None], c=cb), noise)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    out["train_batch"] = n
    out["train_images_per_s"] = round(n * 10 / (time.perf_counter() - t0), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
