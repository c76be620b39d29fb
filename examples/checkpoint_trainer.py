#!/usr/bin/env python3
"""A tiny trainer that checkpoints into a folder the way Hugging Face Trainer does, to run on a
bucketfs mount:

    bucketfs mount alice/ckpts /mnt/ckpts
    python3 examples/checkpoint_trainer.py --dir /mnt/ckpts/run-1 --steps 200 --save-every 20 --keep 3

Every --save-every steps it writes step-N.tmp/ (model, optimizer state, trainer_state.json),
renames it to step-N/ (on bucketfs: one atomic commit, a reader sees all of the checkpoint or
none of it) and deletes all but the last --keep checkpoints. Kill it at any moment (SIGKILL
included) and run it again with the same arguments: it removes the unfinished step-*.tmp/ and
resumes from the newest step-N/. The data of step N depends only on --seed and N, so a run that
was killed and resumed ends with the same weights, bit for bit, as one that was not.

The model is a frozen "backbone" (an embedding table, as in fine-tuning: saved in every
checkpoint, never changed) plus a trained linear head with momentum SGD. Successive checkpoints
share the backbone bytes, which bucketfs does not send twice (deduplicated chunks).

With PyTorch installed (`import torch` works) the model is a torch module saved with torch.save;
otherwise (or with --backend python) it is plain Python arrays saved as raw float64 files.
Prints one line per checkpoint ("saved step-N: B bytes") and a final line with the sha256 of the
weights."""
import argparse
import array
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time

STEP_DIR = re.compile(r"^step-(\d+)$")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="checkpoint folder (e.g. on a bucketfs mount)")
    parser.add_argument("--steps", type=int, default=100, help="train until this step")
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--keep", type=int, default=3, help="checkpoints to keep (older ones are deleted)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frozen-params", type=int, default=1 << 19, help="size of the frozen backbone")
    parser.add_argument("--trainable-params", type=int, default=1 << 14, help="size of the trained head")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (demos)")
    parser.add_argument("--backend", choices=("auto", "torch", "python"), default="auto")
    return parser.parse_args(argv)


# ---- data: step N's batch depends only on (seed, N) ---------------------------------------------

def batch_for(args, step, frozen_value):
    rng = random.Random(args.seed * 1_000_003 + step)
    samples = []
    for _ in range(args.batch):
        index = [rng.randrange(args.trainable_params) for _ in range(16)]
        x = [rng.gauss(0.0, 1.0) for _ in index]
        truth = sum(math.sin(i * 0.001 + args.seed) * v for i, v in zip(index, x))
        offset = sum(frozen_value(i) * v for i, v in zip(index, x)) * 0.01
        samples.append((index, x, truth + offset))
    return samples


# ---- checkpoints --------------------------------------------------------------------------------

def checkpoints(root):
    found = []
    for name in os.listdir(root):
        match = STEP_DIR.match(name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), name))
    return sorted(found)


def write_file(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
    return len(data)


def publish(args, step, files):
    """Writes `files` ({name: bytes}) as step-N.tmp/, renames it step-N/, prunes old ones."""
    final = os.path.join(args.dir, "step-%d" % step)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    written = sum(write_file(os.path.join(tmp, name), data) for name, data in files.items())
    os.rename(tmp, final)
    for old_step, name in checkpoints(args.dir)[:-args.keep]:
        shutil.rmtree(os.path.join(args.dir, name))
    return written


# ---- plain Python backend -----------------------------------------------------------------------

class PythonModel:
    def __init__(self, args):
        rng = random.Random(args.seed)
        self.frozen = array.array("d", (rng.uniform(-1, 1) for _ in range(args.frozen_params)))
        self.weights = array.array("d", bytes(8 * args.trainable_params))
        self.momentum = array.array("d", bytes(8 * args.trainable_params))

    def frozen_value(self, index):
        return self.frozen[index % len(self.frozen)]

    def train_step(self, samples, lr=0.05, beta=0.9):
        loss = 0.0
        grads = {}
        for index, x, y in samples:
            offset = sum(self.frozen_value(i) * v for i, v in zip(index, x)) * 0.01
            error = sum(self.weights[i] * v for i, v in zip(index, x)) + offset - y
            loss += error * error
            for i, v in zip(index, x):
                grads[i] = grads.get(i, 0.0) + 2 * error * v / len(samples)
        for i, g in grads.items():
            self.momentum[i] = beta * self.momentum[i] + g
            self.weights[i] -= lr * self.momentum[i]
        return loss / len(samples)

    def files(self):
        return {"model.bin": self.frozen.tobytes() + self.weights.tobytes(), "optimizer.bin": self.momentum.tobytes()}

    def load(self, folder):
        with open(os.path.join(folder, "model.bin"), "rb") as handle:
            data = handle.read()
        split = 8 * len(self.frozen)
        self.frozen = array.array("d", data[:split])
        self.weights = array.array("d", data[split:])
        with open(os.path.join(folder, "optimizer.bin"), "rb") as handle:
            self.momentum = array.array("d", handle.read())

    def digest(self):
        return hashlib.sha256(self.weights.tobytes()).hexdigest()


# ---- PyTorch backend ----------------------------------------------------------------------------

class TorchModel:
    def __init__(self, args):
        import io

        import torch
        self.torch, self.io = torch, io
        torch.manual_seed(args.seed)
        self.frozen = torch.nn.Embedding(args.frozen_params // 64, 64)
        self.frozen.weight.requires_grad_(False)
        self.head = torch.nn.Parameter(torch.zeros(args.trainable_params, dtype=torch.float64))
        self.optimizer = torch.optim.SGD([self.head], lr=0.05, momentum=0.9)
        self.flat = self.frozen.weight.detach().reshape(-1).double()

    def frozen_value(self, index):
        return float(self.flat[index % self.flat.numel()])

    def train_step(self, samples):
        torch = self.torch
        self.optimizer.zero_grad()
        loss = torch.zeros((), dtype=torch.float64)
        for index, x, y in samples:
            idx = torch.tensor(index)
            xs = torch.tensor(x, dtype=torch.float64)
            offset = (self.flat[idx] * xs).sum() * 0.01
            loss = loss + ((self.head[idx] * xs).sum() + offset - y) ** 2
        loss = loss / len(samples)
        loss.backward()
        self.optimizer.step()
        return float(loss)

    def files(self):
        def saved(obj):
            buffer = self.io.BytesIO()
            self.torch.save(obj, buffer)
            return buffer.getvalue()
        return {"model.pt": saved({"frozen": self.frozen.state_dict(), "head": self.head.detach()}),
                "optimizer.pt": saved(self.optimizer.state_dict())}

    def load(self, folder):
        torch = self.torch
        model = torch.load(os.path.join(folder, "model.pt"))
        self.frozen.load_state_dict(model["frozen"])
        self.flat = self.frozen.weight.detach().reshape(-1).double()
        with torch.no_grad():
            self.head.copy_(model["head"])
        self.optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt")))

    def digest(self):
        return hashlib.sha256(self.head.detach().numpy().tobytes()).hexdigest()


def make_model(args):
    if args.backend in ("auto", "torch"):
        try:
            return TorchModel(args), "torch"
        except ImportError:
            if args.backend == "torch":
                raise
    return PythonModel(args), "python"


def main(argv):
    args = parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    # What a killed run left half written is not a checkpoint.
    for name in os.listdir(args.dir):
        if name.startswith("step-") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(args.dir, name), ignore_errors=True)
    model, backend = make_model(args)
    step = 0
    found = checkpoints(args.dir)
    if found:
        step, name = found[-1]
        model.load(os.path.join(args.dir, name))
        print("resumed from %s" % name, flush=True)
    else:
        print("starting (backend %s)" % backend, flush=True)
    written_total = 0
    started = time.monotonic()
    loss = float("nan")
    while step < args.steps:
        step += 1
        loss = model.train_step(batch_for(args, step, model.frozen_value))
        if args.step_sleep:
            time.sleep(args.step_sleep)
        if step % args.save_every == 0 or step == args.steps:
            state = {"global_step": step, "loss": loss, "seed": args.seed, "backend": backend}
            files = model.files()
            files["trainer_state.json"] = json.dumps(state, indent=2).encode()
            written = publish(args, step, files)
            written_total += written
            print("saved step-%d: %d bytes (loss %.6f)" % (step, written, loss), flush=True)
    print("done: step %d, loss %.6f, %d checkpoint bytes written in %.1f s, weights sha256 %s"
          % (step, loss, written_total, time.monotonic() - started, model.digest()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
