"""Renderer: ray/box intersection, packed marching, occupancy skipping, weights by hand."""

from __future__ import annotations

import math

import torch

from nerf_training.occupancy import OccupancyGrid, OccupancyGridConfig
from nerf_training.rendering import (
    RaySamples,
    distortion_loss,
    exclusive_segment_cumsum,
    march_rays,
    ray_aabb_intersect,
    render_rays,
    render_weight_from_density,
)

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_ray_aabb_intersect_hand_values():
    origins = torch.tensor([[-2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 5.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    t_near, t_far, hit = ray_aabb_intersect(origins, dirs, BOX)
    assert hit.tolist() == [True, True, False]
    torch.testing.assert_close(t_near[:2], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(t_far[:2], torch.tensor([3.0, 1.0]))


def test_weights_match_hand_derivation_and_reset_per_ray():
    # Ray 0: sigma 1 over 0.5 then sigma 2 over 0.25 (both optical depth 0.5); ray 1: 3 x 0.1.
    t_starts = torch.tensor([0.0, 0.5, 2.0])
    t_ends = torch.tensor([0.5, 0.75, 2.1])
    sigmas = torch.tensor([1.0, 2.0, 3.0])
    ray_indices = torch.tensor([0, 0, 1])
    weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, 2)
    a = 1 - math.exp(-0.5)
    torch.testing.assert_close(alphas, torch.tensor([a, a, 1 - math.exp(-0.3)]))
    torch.testing.assert_close(trans, torch.tensor([1.0, math.exp(-0.5), 1.0]))
    torch.testing.assert_close(weights, torch.tensor([a, math.exp(-0.5) * a, 1 - math.exp(-0.3)]))


def test_exclusive_segment_cumsum_matches_loop():
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 0, 1, 5, 2])
    ray_indices = torch.repeat_interleave(torch.arange(5), counts)
    values = torch.rand(int(counts.sum()), generator=g)
    out = exclusive_segment_cumsum(values, ray_indices, 5)
    expected, start = [], 0
    for c in counts.tolist():
        running = 0.0
        for v in values[start : start + c].tolist():
            expected.append(running)
            running += v
        start += c
    torch.testing.assert_close(out, torch.tensor(expected))


def test_render_composites_background_and_depth():
    # One empty ray (background only) and one with an opaque sample at t in [1, 2].
    samples = march_rays(
        torch.tensor([[-2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]),
        torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
        BOX,
        step_size=1.0,
    )
    assert samples.ray_indices.tolist() == [0, 0, 1, 1]

    def rgb_sigma_fn(t_starts, t_ends, ray_indices):
        sigma = torch.where((ray_indices == 1) & (t_starts == 1.0), 1e4, 0.0)
        return torch.tensor([[1.0, 0.0, 0.0]]).expand(len(t_starts), 3), sigma

    rgb, opacity, depth, _ = render_rays(rgb_sigma_fn, samples, 2, torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(rgb, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(opacity, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(depth[1], torch.tensor(1.5))


def test_distortion_loss_hand_derived_and_equal_to_the_double_sum():
    # Ray 0: two unit intervals [0,1], [1,2] with weights 0.5, 0.5 (midpoints 0.5, 1.5).
    # sum_ij w_i w_j |s_i - s_j| = 2 * 0.25 * 1 = 0.5; 1/3 sum w^2 d = (0.25 + 0.25) / 3.
    # Ray 1: one interval [0, 2] with weight 1: 0 + 1/3 * 1 * 2.
    samples = RaySamples(
        torch.tensor([0, 0, 1]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 2.0])
    )
    weights = torch.tensor([0.5, 0.5, 1.0])
    want = ((0.5 + 0.5 / 3) + 2.0 / 3) / 2
    torch.testing.assert_close(distortion_loss(weights, samples, 2), torch.tensor(want))
    # Scaling the distances by 2 and passing scale=2 changes nothing.
    doubled = RaySamples(samples.ray_indices, samples.t_starts * 2, samples.t_ends * 2)
    torch.testing.assert_close(distortion_loss(weights, doubled, 2, scale=2.0), torch.tensor(want))

    # Random packed rays against the O(S^2) definition.
    gen = torch.Generator().manual_seed(0)
    counts = [3, 1, 5]
    ray_indices = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    t = torch.cat([torch.cumsum(torch.rand(c + 1, generator=gen), 0) for c in counts])
    starts = torch.cat([t[sum(counts[:r]) + r :][:c] for r, c in enumerate(counts)])
    ends = torch.cat([t[sum(counts[:r]) + r + 1 :][:c] for r, c in enumerate(counts)])
    w = torch.rand(len(ray_indices), generator=gen, dtype=torch.float64).float()
    brute = 0.0
    for r in range(3):
        m = ray_indices == r
        mid, d, wr = (starts[m] + ends[m]) / 2, ends[m] - starts[m], w[m]
        brute += (wr[:, None] * wr[None] * (mid[:, None] - mid[None]).abs()).sum()
        brute += (wr.square() * d).sum() / 3
    got = distortion_loss(w, RaySamples(ray_indices, starts, ends), 3)
    torch.testing.assert_close(got, brute / 3, rtol=1e-5, atol=1e-6)


def test_march_rays_is_packed_and_covers_the_box():
    origins = torch.tensor([[-3.0, 0.0, 0.0], [0.0, -3.0, 0.5], [0.0, 5.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    samples = march_rays(origins, dirs, BOX, step_size=0.3)
    counts = torch.bincount(samples.ray_indices, minlength=3)
    assert counts.tolist() == [7, 7, 0]  # ceil(2 / 0.3) = 7 per crossing ray, none for a miss
    first = samples.ray_indices == 0
    torch.testing.assert_close(samples.t_starts[first][0], torch.tensor(2.0))
    torch.testing.assert_close(samples.t_ends[first][-1], torch.tensor(4.0))
    assert torch.all(samples.t_ends > samples.t_starts)


def test_occupancy_skipping_never_drops_a_sample_in_an_occupied_cell():
    g = torch.Generator().manual_seed(0)
    grid = OccupancyGrid(BOX, OccupancyGridConfig(resolution=8))
    grid.binary = torch.rand(8**3, generator=g) < 0.3
    origins = torch.rand(200, 3, generator=g) * 4 - 2
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    all_samples = march_rays(origins, dirs, BOX, step_size=0.05)
    kept = march_rays(origins, dirs, BOX, step_size=0.05, grid=grid)
    t_mid = (all_samples.t_starts + all_samples.t_ends) / 2
    pts = origins[all_samples.ray_indices] + dirs[all_samples.ray_indices] * t_mid[:, None]
    occupied = grid.occupied(pts)
    assert 0 < int(occupied.sum()) < len(all_samples)
    # Kept samples are exactly the occupied candidates, in the same packed order.
    torch.testing.assert_close(kept.t_starts, all_samples.t_starts[occupied])
    assert torch.equal(kept.ray_indices, all_samples.ray_indices[occupied])


def test_occupancy_update_marks_dense_cells_and_clears_empty_ones():
    grid = OccupancyGrid(BOX, OccupancyGridConfig(resolution=4, threshold=0.01))

    def density(x):  # a dense slab at x > 0.5, empty elsewhere
        return torch.where(x[:, 0] > 0.5, 100.0, 0.0)

    assert grid.update(0, density, step_size=0.01)
    occ = grid.binary.view(4, 4, 4)
    assert occ[3].all() and not occ[:2].any()


def test_early_termination_drops_samples_behind_an_opaque_wall():
    origins = torch.tensor([[-3.0, 0.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0]])

    def sigma_fn(t_starts, t_ends, ray_indices):
        return torch.where(t_starts >= 2.5, 1e3, 0.0)  # opaque from x = -0.5 on

    samples = march_rays(origins, dirs, BOX, step_size=0.1, sigma_fn=sigma_fn)
    # Samples up to and including the first opaque one survive; everything behind is dropped.
    assert len(samples) == 6
    torch.testing.assert_close(samples.t_starts[-1], torch.tensor(2.5))
