"""A long run survives its session: after every epoch `OUTPUT_DIR/resume.pt` holds what `--resume` needs to go on
as if never stopped (weights, optimiser, schedule, random state, where the photo stream was, the learning curve).
Plain data and tensors only, read back with ``weights_only=True``."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

RESUME_NAME = "resume.pt"

# Arguments that are paths: stored as strings in resume.pt, made Paths again on resume.
_PATH_ARGS = ("data", "images", "test_data", "test_images", "taxonomy", "init_from", "mix_data", "mix_images",
              "output_dir")


def save_resume_point(output_dir: Path, *, args: dict, model, optimizer, scheduler, generator: torch.Generator,
                      stream_state: list, **progress) -> None:
    """Write resume.pt atomically (a kill while writing leaves the previous one). `progress`: epoch, history, best,
    seen, train_seconds, summary: plain data."""
    payload = {"args": args, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "stream": stream_state,
               **progress}
    tmp = output_dir / (RESUME_NAME + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(output_dir / RESUME_NAME)


def read_resume_point(output_dir: Path) -> dict:
    """resume.pt of the run in output_dir; SystemExit naming the file where no epoch of the run has finished."""
    path = output_dir / RESUME_NAME
    if not path.is_file():
        raise SystemExit(f"--resume: {path} does not exist (no epoch of this run has finished)")
    return torch.load(path, map_location="cpu", weights_only=True)


def resumed_args(state: dict, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments the run was started with, so that its schedule and data match; flags added to the parser
    since then take their defaults."""
    defaults = vars(parser.parse_args([]))
    restored = {k: Path(v) if k in _PATH_ARGS and v is not None else v for k, v in state["args"].items()}
    return argparse.Namespace(**{**defaults, **restored, "resume": True})


def restore(state: dict, model, optimizer, scheduler, generator: torch.Generator) -> list:
    """Load the training state into the freshly built objects; returns the photo stream's [order, position]."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    return state["stream"]
