#!/usr/bin/env python3
"""PyTorch reference run for bench/compare_pytorch.sh: the same model, data, recipe, batch and threads as
`trainer train`, so that throughput and accuracy can be compared in one run on one machine.

Run with Debian's interpreter: /usr/bin/python3 bench/pytorch_train.py --model lenet5 --epochs 2
Prints one JSON line per epoch and a final JSON line {"final": ...}.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    t = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    return t.reshape(dims)


def load_fashion(data_dir, train):
    prefix = "train" if train else "t10k"
    def find(stem):
        for ext in (".gz", ""):
            p = os.path.join(data_dir, stem + ext)
            if os.path.exists(p):
                return p
        raise FileNotFoundError(os.path.join(data_dir, stem))
    x = read_idx(find(f"{prefix}-images-idx3-ubyte")).unsqueeze(1)
    y = read_idx(find(f"{prefix}-labels-idx1-ubyte")).long()
    return x, y


class LeNet5(nn.Module):
    # Same as src/nn/models.cpp lenet5.
    def __init__(self, c, h, w, classes):
        super().__init__()
        self.conv0 = nn.Conv2d(c, 6, 5, padding=2)
        self.conv1 = nn.Conv2d(6, 16, 5)
        hh, ww = ((h) // 2 - 4) // 2, ((w) // 2 - 4) // 2
        self.fc0 = nn.Linear(16 * hh * ww, 120)
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv0(x)), 2)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(F.relu(self.fc0(x)))))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv0 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn0(self.conv0(x)))
        y = self.bn1(self.conv1(y))
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
    # Same as src/nn/models.cpp cifar_resnet / resnet18.
    def __init__(self, c, classes, width, blocks):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            cout = width << stage
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(name, c, h, w, classes, width):
    if name == "lenet5":
        return LeNet5(c, h, w, classes)
    if name == "resnet18":
        return ResNet(c, classes, width or 64, [2, 2, 2, 2])
    if name.startswith("resnet"):
        n = (int(name[6:]) - 2) // 6
        return ResNet(c, classes, width or 16, [n, n, n])
    raise SystemExit(f"unknown model {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--width", type=int, default=0)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--subset", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (timing only)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    xtr, ytr = load_fashion(args.data_dir, True)
    xte, yte = load_fashion(args.data_dir, False)
    if args.subset:
        xtr, ytr = xtr[:args.subset], ytr[:args.subset]
    xtr = xtr.float().div_(255)
    mean, std = xtr.mean().item(), xtr.std(unbiased=False).item()
    xtr = (xtr - mean) / std
    xte = (xte.float().div_(255) - mean) / std

    model = build(args.model, 1, 28, 28, 10, args.width)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim == 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=args.momentum, nesterov=True)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch, cycle_momentum=False)
    g = torch.Generator().manual_seed(args.seed)
    total_images, total_time = 0, 0.0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        t0 = time.perf_counter()
        seen, loss_sum, correct = 0, 0.0, 0
        for step in range(steps_per_epoch):
            if args.max_steps and step >= args.max_steps:
                break
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            x, y = xtr[idx], ytr[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == y).sum().item()
        dt = time.perf_counter() - t0
        total_images += seen
        total_time += dt
        model.eval()
        with torch.no_grad():
            test_correct = sum((model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
                               for i in range(0, len(xte), 1000))
        print(json.dumps({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                          "test_acc": test_correct / len(xte), "images_per_s": seen / dt}), flush=True)
    print(json.dumps({"final": {"model": args.model, "test_acc": test_correct / len(xte),
                                "images_per_s": total_images / total_time, "torch": torch.__version__,
                                "threads": torch.get_num_threads()}}), flush=True)


if __name__ == "__main__":
    main()
