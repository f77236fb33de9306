#!/usr/bin/env python3
"""Writes the import test fixture with the course's reference model (../shared/reference/course_ref.py):
a tiny ContextUnet (n_feat=8) state_dict saved the way the course notebook saves one, plus fixed
inputs and the reference's noise prediction for them.

Run with Debian's Python and python3-torch:  /usr/bin/python3 scripts/make-import-fixture.py
"""
import os
import sys

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "shared", "reference"))
import course_ref  # noqa: E402

out = os.path.join(here, "..", "tests", "fixtures")
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
model = course_ref.ContextUnet(3, n_feat=8, n_cfeat=5, height=16)
# A few train-mode passes give BatchNorm running statistics that are not the defaults.
model.train()
with torch.no_grad():
    for _ in range(3):
        model(torch.randn(16, 3, 16, 16), torch.rand(16, 1, 1, 1), torch.rand(16, 5))
# The course's checkpoints carry no shortcut weights (it makes a fresh random conv per call,
# whose expectation is zero): the reference below runs with a zero shortcut, and the saved
# state_dict leaves it out, as a course checkpoint does.
with torch.no_grad():
    model.init_conv.shortcut.weight.zero_()
    model.init_conv.shortcut.bias.zero_()
state = {k: v for k, v in model.state_dict().items() if ".shortcut." not in k}
torch.save(state, os.path.join(out, "course-tiny.pth"))

model.eval()
x = torch.randn(3, 3, 16, 16)
t = torch.tensor([0.02, 0.5, 1.0])
c = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0.6, 0, 1.0], [0, 0, 0, 0, 0]])
with torch.no_grad():
    eps = model(x, t.view(-1, 1, 1, 1), c)
for name, value in [("x", x), ("t", t), ("c", c), ("eps", eps)]:
    np.save(os.path.join(out, f"course-tiny-{name}.npy"), value.numpy().astype(np.float32))
print("wrote", out, "torch", torch.__version__)
