"""Train a VQ tokenizer on an image folder (reconstruction + VQ losses; no GAN, no downloads).

    python -m arpg_core.training.train_vq --data data/emoji/train --config VQ-emoji \
        --out runs/vq-emoji --steps 600 --batch-size 64

Decoder fine-tuning keeps the encoder and codebook frozen, so the codes do not change and an ARPG
trained on the --init tokenizer's codes stays valid:

    python -m arpg_core.training.train_vq --data data/emoji/train --init runs/vq-emoji/vq.safetensors \
        --decoder-only --out runs/vq-emoji-dec --steps 1000

Resumes from `<out>/last.pt` when it exists (pass --fresh to start over). On a shared CPU set
OMP_WAIT_POLICY=PASSIVE: with another busy process, spinning OpenMP threads cost ~1.7x.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from arpg_core.data.folder import ImageFolderDataset
from arpg_core.loading import load_tokenizer, save_checkpoint
from arpg_core.tokenizer.vq import VQConfig, VQModel
from arpg_core.training import common
from arpg_core.training.eval_vq import psnr_per_image

EXPORT_NAME = "vq.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="train image folder (class sub-folders or flat)")
    p.add_argument("--val-data", type=Path, help="default: sibling 'val' folder of --data when it exists")
    p.add_argument("--no-val", action="store_true", help="no held-out folder, even when a 'val' sibling exists")
    p.add_argument("--config", help="VQConfig preset name or a JSON file (default: VQ-emoji, or the --init file's)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--l1-weight", type=float, default=1.0, help="L1 on pixels, beside the MSE (0: pure MSE, "
                   "which is what PSNR measures)")
    p.add_argument("--edge-weight", type=float, default=0.5, help="L1 on image gradients")
    p.add_argument("--mse", choices=["pooled", "psnr"], default="pooled",
                   help="pooled: MSE over the batch; psnr: mean of each image's log MSE (scaled to the pooled "
                        "MSE's size), whose optimum is the best mean per-image PSNR, the number eval reports")
    p.add_argument("--entropy-weight", type=float, default=0.0)
    p.add_argument("--balance-alpha", type=float, default=0.5, help="class weights ∝ 1/count^alpha")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="no random mirroring (for data where left and right differ: text, arrows, digits)")
    p.add_argument("--reinit-every", type=int, default=100, help="re-seed unused codes every N steps")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast (emulated, so slower than float32, on CPUs without AVX512-BF16/AMX)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--init", type=Path, help="start a new run from these tokenizer weights (a .safetensors/.pt file)")
    p.add_argument("--decoder-only", action="store_true",
                   help="freeze encoder and codebook, train the decoder: codes do not change, so an ARPG "
                        "trained on the --init tokenizer's codes stays valid")
    return p.parse_args(argv)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, edge_weight: float, l1_weight: float = 1.0,
                        mse: str = "pooled") -> dict:
    recon = recon.float()
    if mse == "psnr":
        # d log(m_i) = d m_i / m_i: every image counts by its relative error, as in a mean of PSNRs, where
        # the pooled MSE lets the worst images dominate. The detached mean keeps gradients the usual size.
        per_image = (recon - target).pow(2).flatten(1).mean(1) + 1e-8
        terms = {"log_mse": per_image.log().mean() * per_image.mean().detach()}  # negative: not an MSE
    else:
        terms = {"mse": F.mse_loss(recon, target)}
    if l1_weight > 0:
        terms["l1"] = l1_weight * F.l1_loss(recon, target)
    if edge_weight > 0:
        dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
        dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
        edge = F.l1_loss(dx(recon), dx(target)) + F.l1_loss(dy(recon), dy(target))
        terms["edge"] = edge_weight * edge
    return terms


class CodeTracker:
    """Counts code use since the last re-seed and keeps recent encoder outputs to re-seed from."""

    def __init__(self, codebook_size: int, keep: int = 8192):
        self.counts = torch.zeros(codebook_size, dtype=torch.long)
        self.recent = torch.empty(0)
        self.keep = keep

    def observe(self, codes: torch.Tensor, latents: torch.Tensor) -> None:
        self.counts += torch.bincount(codes.flatten(), minlength=len(self.counts))
        flat = latents.detach().float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # [N, D]
        self.recent = torch.cat([flat, self.recent])[: self.keep]

    def usage(self) -> float:
        return (self.counts > 0).float().mean().item()

    @torch.no_grad()
    def reseed(self, model: VQModel, optimizer, ema: common.EMA, gen: torch.Generator, dry: bool = False) -> int:
        """Unused codes <- random recent encoder outputs (in the EMA copy too, so it does not lag).
        `dry` starts a new counting window and changes nothing (a frozen codebook stays as it is)."""
        dead = (self.counts == 0).nonzero().flatten()
        if dry:
            self.counts.zero_()
            return 0
        if len(dead) and len(self.recent):
            pick = torch.randint(len(self.recent), (len(dead),), generator=gen)
            weight = model.quantize.embedding.weight
            weight[dead] = self.recent[pick].to(weight.dtype)
            ema.shadow["quantize.embedding.weight"][dead] = weight[dead].float()
            state = optimizer.state.get(weight, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0
        self.counts.zero_()
        return len(dead)


def train_step(model, optimizer, tracker, images, args) -> dict[str, float]:
    with common.autocast(args.bf16):
        with torch.set_grad_enabled(not args.decoder_only):
            latents = model.encode_latents(images)
            z_q, vq = model.quantize(latents)
        recon = model.decoder(model.post_quant_conv(z_q))
    terms = reconstruction_loss(recon, images.float(), args.edge_weight, args.l1_weight, args.mse)
    loss = sum(terms.values()) + vq.total
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    tracker.observe(vq.codes, latents)
    logs = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, "vq": vq.total.item()}
    if "mse" not in logs:  # --mse psnr: still log the pooled MSE, comparable across runs
        logs["mse"] = F.mse_loss(recon.detach().float(), images.float()).item()
    return logs


@torch.no_grad()
def evaluate(model: VQModel, images: torch.Tensor, bf16: bool, batch: int = 64) -> tuple[float, torch.Tensor]:
    """-> (PSNR in dB on [0, 1] pixels, clamped reconstructions)."""
    model.eval()
    outs = []
    for chunk in images.split(batch):
        with common.autocast(bf16):
            outs.append(model.decode(model.encode(chunk)).float().clamp(-1, 1))
    model.train()
    recon = torch.cat(outs)
    return psnr_per_image(recon, images).mean().item(), recon


def save_sheet(path: Path, originals: torch.Tensor, recons: torch.Tensor) -> None:
    """Originals in the top row, reconstructions below."""
    grid = torch.cat([torch.cat(list(originals), -1), torch.cat(list(recons), -1)], -2)  # [3, 2H, nW]
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def load_data(args, cfg: VQConfig) -> tuple[ImageFolderDataset, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    # a mistyped --val-data fails before decoding
    val_dir = common.held_out_folder(args.data, args.val_data, args.no_val)
    train = ImageFolderDataset(args.data, cfg.image_size)
    for note in train.notes():
        print(note, flush=True)
    images, labels = train.load_all()
    val = ImageFolderDataset(val_dir, cfg.image_size).load_all()[0] if val_dir is not None else None
    return train, images, labels, val


def run_eval(model, ema, val, step, args, progress, split: str = "val") -> None:
    """PSNR of the raw and EMA weights on `val`, a reconstruction sheet, and the better weights exported.
    `split` names what `val` is ("train" when there is no held-out folder)."""
    ema_model = ema.module(model)
    psnr_ema, recon_ema = evaluate(ema_model, val, args.bf16)
    psnr_raw, recon_raw = evaluate(model, val, args.bf16)
    use_ema = psnr_ema >= psnr_raw  # early on the EMA lags; show and export whichever is better now
    recon = recon_ema if use_ema else recon_raw
    record = {"step": step, "time": time.time(), f"{split}_psnr_ema": psnr_ema, f"{split}_psnr": psnr_raw}
    common.log_jsonl(args.out / "eval.jsonl", record)
    progress.write(f"[eval] step {step}: {split} PSNR {psnr_raw:.2f} dB, EMA {psnr_ema:.2f} dB")
    n = min(8, len(val))
    save_sheet(args.out / "samples" / f"step_{step:06d}.png", val[:n], recon[:n])
    meta = {
        "step": str(step),
        "weights": "ema" if use_ema else "raw",
        f"{split}_psnr": f"{max(psnr_ema, psnr_raw):.3f}",
    }
    save_checkpoint(ema_model if use_ema else model, args.out / EXPORT_NAME, dtype=torch.float32,
                    extra_metadata=meta)


def build(args):
    ckpt_path = args.out / common.CHECKPOINT_NAME
    state = None if args.fresh or not ckpt_path.exists() else common.load_checkpoint(ckpt_path)
    if state is not None:
        was = bool(state.get("args", {}).get("decoder_only", False))
        if was != args.decoder_only:
            raise SystemExit(f"{ckpt_path} was trained {'with' if was else 'without'} --decoder-only; resume it "
                             f"the same way, or pass --fresh to start over")
        if args.init is not None:
            print(f"resuming from {ckpt_path}; --init is used only on a fresh start", flush=True)
    elif args.decoder_only and args.init is None:
        raise SystemExit("--decoder-only needs --init: the tokenizer whose encoder and codes to keep")
    config = VQConfig.from_spec(args.config) if args.config else None  # a preset name or a JSON file
    start = load_tokenizer(args.init, config=config) if args.init is not None and state is None else None
    if state:
        cfg = VQConfig.from_dict(state["config"])
        if args.config:
            print(f"resuming {ckpt_path}: its model shape is kept, --config {args.config} is not applied", flush=True)
    else:
        cfg = start.config if start is not None else VQConfig.from_spec(args.config or "VQ-emoji")
    model = VQModel(cfg, entropy_weight=args.entropy_weight)
    if start is not None:
        model.load_state_dict(start.state_dict())
    if args.decoder_only:
        for part in (model.encoder, model.quant_conv, model.quantize):
            part.requires_grad_(False)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = common.EMA(model, args.ema_decay)
    optimizer = common.make_optimizer(model, args.lr, args.weight_decay, betas=(0.9, 0.99))
    step = common.restore_training_state(state, model, ema, optimizer) if state else 0
    common.apply_settings(ema, optimizer, args.ema_decay, args.weight_decay)  # the command line wins on resume
    return cfg, model, ema, optimizer, step


def train(args: argparse.Namespace) -> int:
    """Runs to args.steps (or until SIGINT/SIGTERM); returns the step reached."""
    torch.set_num_threads(args.threads)
    if note := common.bf16_note(args.bf16):
        print(note, flush=True)
    torch.manual_seed(args.seed)
    cfg, model, ema, optimizer, step = build(args)  # before the folder exists: a refused run leaves none
    common.check_steps_left(step, args.steps, args.out / common.CHECKPOINT_NAME)
    args.out.mkdir(parents=True, exist_ok=True)
    if step == 0:
        common.set_aside_logs(args.out, "eval.jsonl", "train.jsonl")
    train_set, images, labels, val = load_data(args, cfg)
    split = "val" if val is not None else "train"
    if val is None:  # still measure and export: pick raw vs EMA weights on a fixed slice of the training set
        val = images[torch.linspace(0, len(images) - 1, min(64, len(images))).long()]  # across all classes
        print(f"no held-out folder (--val-data, or a 'val' sibling of --data): PSNR is measured on {len(val)} "
              "training images", flush=True)
    print(
        f"VQ {cfg.to_json()} | {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | "
        f"{len(images)} train images in {train_set.num_classes} classes | batch {args.batch_size} | start step {step}",
        flush=True,
    )
    gen = torch.Generator().manual_seed(args.seed * 1000 + step)
    batches = common.balanced_batches(common.class_balanced_weights(labels, args.balance_alpha), args.batch_size, gen)
    tracker, progress = CodeTracker(cfg.codebook_size), common.Progress(step, args.steps, args.batch_size)
    counted_from = step  # counts are not saved: a window that began before a resume is incomplete
    save = lambda: common.save_checkpoint(
        args.out / common.CHECKPOINT_NAME,
        **common.training_state(model, ema, optimizer, step, cfg.to_dict(), args=vars(args) | {"out": str(args.out)}),
    )
    with common.StopFlag() as flag:
        while step < args.steps and not flag.stop:
            batch = images[next(batches)]
            if args.flip:
                flip = torch.rand(len(batch), generator=gen) < 0.5
                batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            if args.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            common.set_lr(optimizer, common.lr_at(step, args.lr, args.warmup, args.steps))
            logs = train_step(model, optimizer, tracker, batch, args)
            ema.update(model, step)
            step += 1
            progress.update(logs["loss"], mse=logs["mse"], usage=tracker.usage())
            if step % args.reinit_every == 0:
                partial = step - counted_from < args.reinit_every  # codes unseen since the resume may be live
                usage, dead = tracker.usage(), tracker.reseed(model, optimizer, ema, gen,
                                                              dry=args.decoder_only or partial)
                counted_from = step
                common.log_jsonl(args.out / "train.jsonl", {"step": step, **logs, "usage": usage, "reseeded": dead})
            if step % args.eval_every == 0 or step == args.steps:
                run_eval(model, ema, val, step, args, progress, split)
            if step % args.save_every == 0:
                save()
        if flag.stop and step % args.eval_every:  # stopped early: export the weights reached
            save()  # first: the evaluation takes a while, and a second signal must not lose the steps
            run_eval(model, ema, val, step, args, progress, split)
    save()
    progress.close()
    print(f"stopped at step {step}; checkpoint {args.out / common.CHECKPOINT_NAME}", flush=True)
    return step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.check_options(args, "train_vq")
    with common.trainer_errors("train_vq", args.out):
        train(args)


if __name__ == "__main__":
    main()
