"""One Trainer run for the resume tests, in its own process so that it can die by SIGKILL.

    python resume_worker.py MODEL_DIR OUTPUT_DIR [--resume] [--kill-after-update K] [--kill-in-save K]

Trains a tiny BERT masked LM (dropout on; the masking collator draws from its per-batch generator) with gradient
accumulation over several epochs of a fixed synthetic corpus, logging every LOGGING_STEPS updates and saving every
SAVE_STEPS (so a checkpoint holds a partial loss sum that the next log after a resume must include).
--kill-after-update K: SIGKILL the process as soon as update K has been computed and the last checkpoint before it
is committed (mid-run, between saves).
--kill-in-save K: SIGKILL the process inside Orbax's commit of checkpoint K: its files are written into the
temporary directory but the rename that publishes it has not happened.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from pathlib import Path

import jax

jax.config.update("jax_default_matmul_precision", "highest")

UPDATES = 12
SAVE_STEPS = 3
LOGGING_STEPS = 2
ACCUMULATION = 2
WORDS = ("the a movie film was is plot acting very quite really story good bad great awful scene music long short "
         "funny dull actor director").split()  # fmt: skip


def corpus(n: int = 40, seed: int = 0) -> list[dict]:
    """`n` short texts of 3 to 12 random words (a fixed seed: every process trains on the same records)."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))} for _ in range(n)]


def _kill_after(k: int, output_dir: str) -> None:
    from jaxformers.training import trainer

    make = trainer.make_train_step
    committed = Path(output_dir) / "checkpoints" / str(k // SAVE_STEPS * SAVE_STEPS)

    def make_killing(*args, **kwargs):
        train_step, eval_step = make(*args, **kwargs)

        def step(state, batch):
            state, metrics = train_step(state, batch)
            if int(state.step) == k * ACCUMULATION:
                # the last checkpoint's background write may still be running: let it commit first, so the kill
                # lands between saves (the kill inside a save is the other test case)
                deadline = time.monotonic() + 300
                while not committed.is_dir() and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
            return state, metrics

        return step, eval_step

    trainer.make_train_step = make_killing


def _kill_in_save(k: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        finalize = cls.finalize

        async def killing(self, *args, _finalize=finalize, **kwargs):
            if self.get_final().name == str(k):
                os.kill(os.getpid(), signal.SIGKILL)
            return await _finalize(self, *args, **kwargs)

        cls.finalize = killing


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after-update", type=int)
    parser.add_argument("--kill-in-save", type=int)
    opts = parser.parse_args()
    if opts.kill_after_update:
        _kill_after(opts.kill_after_update, opts.output_dir)
    if opts.kill_in_save:
        _kill_in_save(opts.kill_in_save)

    import jaxformers as jf
    from jaxformers.training.arguments import TrainingArguments
    from jaxformers.training.trainer import Trainer

    tokenizer = jf.AutoTokenizer.from_pretrained(opts.model_dir)
    model = jf.AutoModelForMaskedLM.from_pretrained(opts.model_dir)
    args = TrainingArguments(opts.output_dir, learning_rate=1e-3, per_device_train_batch_size=4, max_steps=UPDATES,
                             gradient_accumulation_steps=ACCUMULATION, warmup_steps=2, logging_steps=LOGGING_STEPS,
                             save_steps=SAVE_STEPS, max_length=16, seed=7, disable_tqdm=True, report_to="jsonl",
                             resume_from_checkpoint=True if opts.resume else None)  # fmt: skip
    Trainer(model, args, train_dataset=corpus(), tokenizer=tokenizer).train()


if __name__ == "__main__":
    main()
