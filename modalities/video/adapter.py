"""Video clips as VideoMAE sees them (Tong et al. 2022): (C, T, H, W) clips cut into tubelets of
2 frames x 16 x 16 pixels by the grid adapter with three spatial axes.

Token coordinates are (t, y, x) tubelet indices, so clips of any length and any size are embedded
by the same weights without interpolating a position table (Hugging Face's VideoMAE fixes H and
W). Masking hides 90 % of the tubes (one 2-D mask repeated over time), VideoMAE's default: a
tube hidden at one step and visible at the next could be copied across time.

Features (``pool``): per time step the tokens' mean and maximum over space, concatenated over
time, as the audio features keep their frequency bands (``GridConfig.keep_last_axis``). A mean over
time as well, VideoMAE's head, is the same for a clip played forwards and backwards, so it cannot
tell "left" from "right" or "growing" from "shrinking"; a mean over space dilutes a small moving
thing by the area of the background around it, where the maximum keeps it. Clips of another length
are resampled in time (linearly) to the steps of the configured size, so features keep one size.
Measured on the built-in motion set (tests/test_recipe_video.py: micro encoder, 8 frames of 32 x
32 at stride 2, 150 steps; linear probe on 80 held-out clips, chance 0.125): clips 0.50, single
frames 0.14, clips through the mean alone 0.25. A randomly initialised video encoder reads as much
(0.50): tubelets and attention across time carry the motion, and a short pretraining does not add
to it (see the README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from foundations.adapter import ModelDefaults
from foundations.grid import GridAdapter
from foundations.losses import normalize_target
from foundations.masking import MaskConfig


class VideoAdapter(GridAdapter):
    name = "video"
    dims = 3
    # VideoMAE: tube masking at 0.9, targets normalised per tubelet and channel (its norm_pix loss)
    defaults = ModelDefaults(MaskConfig("tube", 0.9, tube_axis=0), norm_target=True)

    def normalize_target(self, target, weights=None):
        """VideoMAE's norm-pix: each channel of each tubelet to zero mean and unit variance over its
        pixels. (B, M, P) with P = (frames, y, x, channel) -> (B, M, P)."""
        values, w = self._channels(target), self._channels(weights)
        return normalize_target(values, w, dim=-2)[0].flatten(-2)

    def denormalize_prediction(self, pred, target, weights=None):
        _, mean, std = normalize_target(self._channels(target), self._channels(weights), dim=-2)
        return (self._channels(pred) * std + mean).flatten(-2)

    def _channels(self, t):
        """(B, M, P) -> (B, M, P / C, C), a view; None stays None."""
        return None if t is None else t.unflatten(-1, (-1, self.config.channels))

    def pool(self, tokens: torch.Tensor, x) -> torch.Tensor:
        """tokens (B, N, D) in (t, y, x) order -> (B, steps * 2D), steps = size[0] // patch[0]."""
        image, _ = self.split(x)
        B, _, D = tokens.shape
        grid = tokens.reshape(B, image.shape[2] // self.config.patch[0], -1, D)  # (B, T', H'W', D)
        per_step = torch.cat([grid.mean(2), grid.amax(2)], -1)  # (B, T', 2D)
        steps = self.config.size[0] // self.config.patch[0]
        if per_step.shape[1] != steps:  # another clip length: resampled to the configured steps
            per_step = F.interpolate(per_step.transpose(1, 2), steps, mode="linear", align_corners=True).transpose(1, 2)
        return per_step.flatten(1)

    def pooled_dim(self, dim: int) -> int:
        return 2 * dim * (self.config.size[0] // self.config.patch[0])
