"""U-Net membrane training and prediction: learning, tiling, storage, determinism, bad input."""

import io
import math
import time

import numpy as np
import pytest
import torch

from neuropipe.ops import MembraneModel, make_sample, pixel_scores, predict_membrane, train_membrane
from neuropipe.ops._network import UNet2d
from neuropipe.ops.unet import _rate_factor

TINY = dict(width=8, depth=2, crop=48, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def small():
    return make_sample((4, 64, 64), seed=5)


@pytest.fixture(scope="module")
def model(small):
    return train_membrane(small.image, small.membrane, iterations=30, **TINY)


def test_short_training_reduces_the_loss(model):
    assert model.iterations == len(model.history) == 30
    assert np.mean(model.history[-5:]) < 0.8 * np.mean(model.history[:5])
    assert model.final_loss == model.history[-1]
    assert model.device == "cpu" and model.train_seconds > 0


def test_prediction_has_the_volume_shape_dtype_and_range(model):
    volume = make_sample((3, 50, 70), seed=6).image  # not divisible by 2**depth
    prob = predict_membrane(model, volume, tile=32, overlap=8)
    assert prob.shape == volume.shape and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_tiles_blend_without_seams(model, small):
    whole = predict_membrane(model, small.image, tile=64)
    tiled = predict_membrane(model, small.image, tile=32, overlap=16, batch_size=3)
    difference = np.abs(whole - tiled)  # butting tiles (overlap=0) differ by up to 0.3 at the seams
    assert difference.mean() < 0.01 and difference.max() < 0.1


def test_bytes_round_trip_gives_identical_predictions(model, small):
    data = model.to_bytes()
    restored = MembraneModel.from_bytes(data)
    assert restored.hyperparameters == model.hyperparameters
    assert restored.history == model.history
    expected = predict_membrane(model, small.image)
    np.testing.assert_array_equal(predict_membrane(restored, small.image), expected)
    payload = torch.load(io.BytesIO(data), weights_only=True)
    assert payload["hyperparameters"]["width"] == 8


def test_bytes_that_are_no_model_are_refused():
    with pytest.raises(ValueError, match="not a serialised MembraneModel"):
        MembraneModel.from_bytes(b"not a model")


def test_training_is_deterministic_and_leaves_the_global_rng_alone(small):
    before = torch.get_rng_state()
    a = train_membrane(small.image, small.membrane, iterations=3, seed=7, **TINY)
    assert torch.equal(before, torch.get_rng_state())
    b = train_membrane(small.image, small.membrane, iterations=3, seed=7, device=torch.device("cpu"), **TINY)
    assert a.history == b.history


def test_minutes_alone_bound_the_training(small):
    start = time.perf_counter()
    m = train_membrane(small.image, small.membrane, minutes=0.01, **TINY)
    assert m.iterations >= 1
    assert time.perf_counter() - start < 10


def test_progress_is_logged(small, caplog):
    with caplog.at_level("INFO", logger="neuropipe.ops.unet"):
        train_membrane(small.image, small.membrane, iterations=4, **{**TINY, "progress": True})
    assert "iteration 4 loss" in caplog.text


@pytest.mark.parametrize(
    "change, message",
    [
        ({}, "give iterations and/or minutes"),
        ({"iterations": 0}, "iterations must be an integer >= 1; got 0"),
        ({"minutes": -1.0}, "minutes must be a finite number > 0; got -1.0"),
        ({"iterations": 1, "labels": np.zeros((2, 16, 16), bool)}, "labels must contain both classes; got 0"),
        ({"iterations": 1, "labels": np.ones((2, 16, 17), bool)},
         r"same shape; got \(2, 16, 16\) and \(2, 16, 17\)"),
        ({"iterations": 1, "images": np.full((2, 16, 16), np.nan)}, "images contains 512 NaN"),
        ({"iterations": 1, "depth": 0}, "depth must be an integer >= 1; got 0"),
        ({"iterations": 1, "norm": "layer"}, "norm must be one of"),
    ],
)
def test_invalid_training_input_is_refused(change, message):
    labels = np.zeros((2, 16, 16), bool)
    labels[:, ::4] = True
    args = {"images": np.where(labels, 40.0, 200.0), "labels": labels, **TINY, **change}
    with pytest.raises(ValueError, match=message):
        train_membrane(args.pop("images"), args.pop("labels"), **args)


def test_invalid_prediction_input_is_refused(model):
    with pytest.raises(ValueError, match="overlap must be an integer in"):
        predict_membrane(model, np.zeros((1, 8, 8)), tile=16, overlap=16)
    with pytest.raises(ValueError, match="model must be a MembraneModel"):
        predict_membrane("model", np.zeros((1, 8, 8)))


@pytest.mark.slow
def test_slow_training_on_synthetic_sample_reaches_low_pixel_error_on_held_out_volume():
    train, held_out = make_sample(seed=0), make_sample(seed=1)
    model = train_membrane(train.image, train.membrane, iterations=150, crop=64, progress=False)
    scores = pixel_scores(predict_membrane(model, held_out.image), held_out.membrane)
    assert scores.pixel_error < 0.1


def test_test_time_augmentation_is_exactly_rotation_equivariant(model, small):
    volume = small.image[:2, :64, :64]
    plain = predict_membrane(model, np.rot90(volume, 1, axes=(1, 2)), augment=True)
    turned = np.rot90(predict_membrane(model, volume, augment=True), 1, axes=(1, 2))
    np.testing.assert_allclose(plain, turned, atol=1e-5)
    assert not np.allclose(predict_membrane(model, volume), predict_membrane(model, volume, augment=True))


def test_validation_keeps_the_best_checkpoint(small):
    trained = train_membrane(small.image, small.membrane, iterations=40, crop=32, batch_size=4, width=8, depth=2,
                             progress=False, validation=2, schedule="cosine", precision="float32")
    errors = trained.hyperparameters["validation_errors"]
    assert len(errors) >= 2
    held = np.unique(np.linspace(small.image.shape[0] - 1, 0, 2, endpoint=False).round().astype(int))
    probability = predict_membrane(trained, small.image[held], precision="float32")
    assert pixel_scores(probability, small.membrane[held]).pixel_error == pytest.approx(min(errors), abs=2e-3)


@pytest.mark.parametrize("change, message", [({"schedule": "step"}, "schedule must be"),
                                             ({"validation": 99}, "leaves no slice to train on"),
                                             ({"balance": 2}, "balance must be in")])
def test_invalid_schedule_or_validation_is_refused(small, change, message):
    with pytest.raises(ValueError, match=message):
        train_membrane(small.image, small.membrane, iterations=1, progress=False, **change)


@pytest.mark.parametrize("change, message", [({"precision": "half"}, "precision must be one of"),
                                             ({"warp": -1}, "warp must be"),
                                             ({"average": 1.0}, "average must be in"),
                                             ({"context": -1}, "context must be"),
                                             ({"normalise": "global"}, "normalise must be"),
                                             ({"warmup": 0.5}, "warmup must be a fraction")])
def test_invalid_precision_augmentation_or_context_is_refused(small, change, message):
    with pytest.raises(ValueError, match=message):
        train_membrane(small.image, small.membrane, iterations=1, progress=False, **change)


def test_warmup_ramps_the_learning_rate_from_zero_then_follows_the_schedule(small):
    assert _rate_factor(0.0, "cosine", 0.1) == 0.0
    assert _rate_factor(0.05, "constant", 0.1) == pytest.approx(0.5)
    assert _rate_factor(0.05, "cosine", 0.1) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert _rate_factor(0.5, "cosine", 0.1) == _rate_factor(0.5, "cosine", 0.0) == pytest.approx(0.5)
    # the first step of a warm-up takes no step: the weights stay at their initialisation
    still = train_membrane(small.image, small.membrane, iterations=1, warmup=0.2, **TINY)
    moved = train_membrane(small.image, small.membrane, iterations=1, **TINY)
    torch.manual_seed(0)  # the seed train_membrane initialises with
    initial = UNet2d(width=TINY["width"], depth=TINY["depth"]).down[0][0].weight
    assert torch.equal(still.network.down[0][0].weight.detach(), initial.detach())
    assert not torch.equal(moved.network.down[0][0].weight.detach(), initial.detach())
    assert still.hyperparameters["warmup"] == 0.2


def test_bfloat16_predictions_agree_with_float32(model, small):
    exact = predict_membrane(model, small.image, precision="float32")
    mixed = predict_membrane(model, small.image, precision="bfloat16")
    assert np.abs(exact - mixed).max() < 0.05
    assert np.mean((exact > 0.5) != (mixed > 0.5)) < 0.01


def test_context_slices_feed_the_network_and_survive_storage(small):
    trained = train_membrane(small.image, small.membrane, iterations=5, context=1, warp=0.5, average=0.9, **TINY)
    assert trained.network.down[0][0].in_channels == 3 and trained.hyperparameters["context"] == 1
    restored = MembraneModel.from_bytes(trained.to_bytes())
    np.testing.assert_array_equal(predict_membrane(trained, small.image), predict_membrane(restored, small.image))
    # the prediction of a slice changes when only its neighbour changes
    changed = small.image.copy()
    changed[2] = 255 - changed[2]
    before, after = predict_membrane(trained, small.image), predict_membrane(trained, changed)
    assert np.abs(before[1] - after[1]).max() > 1e-3 and np.array_equal(before[0], after[0])


def test_per_slice_normalisation_ignores_brightness_and_contrast_of_each_section(small):
    trained = train_membrane(small.image, small.membrane, iterations=5, **TINY)  # normalise="slice": the default
    image = small.image.astype(np.float64)
    drifted = image * np.array([0.7, 1.0, 1.3, 0.9])[:, None, None] + np.array([20, 0, -30, 5])[:, None, None]
    np.testing.assert_allclose(predict_membrane(trained, drifted, precision="float32"),
                               predict_membrane(trained, image, precision="float32"), atol=1e-4)
    stacked = train_membrane(small.image, small.membrane, iterations=5, normalise="stack", **TINY)
    assert np.abs(predict_membrane(stacked, drifted) - predict_membrane(stacked, image)).max() > 0.01


@pytest.mark.slow
def test_isbi_2012_held_out_pixel_error_meets_the_floor(isbi_path):
    """Train with the defaults on ISBI 2012 slices 0-19 (1000 steps: about 90 s on a 2-core CPU), score 20-29.

    1000 steps of the defaults gave 0.0752 and 0.0760 (seeds 0 and 1), 1500 gave
    0.0743 and 3000 0.0735-0.0754: the floor is checked at the shortest of these, and the
    longer runs are ``bench/bench_isbi.py``'s. The 90 s assume native bfloat16
    (AVX512-BF16/AMX, or CUDA); a CPU without it trains in float32 at about 140 steps a
    minute: skipped there.
    """
    from neuropipe.ops.unet import _resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if _resolve_precision("auto", device) != "bfloat16":
        pytest.skip("this machine has no native bfloat16 (no AVX512-BF16/AMX CPU, no CUDA): 1000 float32 steps "
                    "take about 7 minutes here; run `python bench/bench_isbi.py` for the figures")

    data = np.load(isbi_path)
    image, membrane = data["image"], data["membrane"]
    # A step budget, not a time budget: on a loaded machine the same 1000 steps take longer.
    model = train_membrane(image[:20], membrane[:20], iterations=1000, seed=0, progress=False)
    error = pixel_scores(predict_membrane(model, image[20:30]), membrane[20:30]).pixel_error
    assert error <= 0.08, error  # a raw intensity threshold: 0.189


def predict_blockwise(model, image, block, **options):
    """Predict ``image`` block by block as the tables do; return the map, its seams (before filling), tiles run."""
    from neuropipe.ops.grid import block_grid, paste, slices
    from neuropipe.ops.unet import MembraneTiling, predict_membrane_block

    tiling = MembraneTiling(image.shape, block, tile=options["tile"], overlap=options["overlap"],
                            context=model.context)
    means, stds = image.mean(axis=(1, 2)), image.std(axis=(1, 2))
    stitched, pieces, tiles = np.zeros(image.shape, np.float32), {}, 0
    for _, core in block_grid(image.shape, block):
        read = tiling.read_box(core)
        (z0, z1) = read[0]
        part, kept = predict_membrane_block(model, image[slices(read)], read=read, core=core, volume_shape=image.shape,
                                            block_shape=block, slice_stats=(means[z0:z1], stds[z0:z1]), **options)
        stitched[slices(core)] = part
        paste(pieces, kept)
        ys, xs = tiling.tiles(core)
        tiles += len(ys) * len(xs) * (core[0][1] - core[0][0])
    seams = np.isnan(stitched)
    for _, core in block_grid(image.shape, block):
        values = stitched[slices(core)]
        tiling.fill(values, core, lambda name, box: pieces[name][slices(box)].copy())
    return stitched, seams, tiles, tiling


@pytest.mark.parametrize("normalise, context, augment", [("stack", 0, False), ("slice", 1, True)])
def test_blocks_that_compute_the_tiles_starting_in_them_predict_what_the_whole_volume_does(normalise, context,
                                                                                            augment):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (9, 70, 90)).astype(np.uint8)
    model = train_membrane(image, rng.random(image.shape) > 0.7, iterations=2, width=4, depth=2, crop=32,
                           batch_size=2, precision="float32", context=context, normalise=normalise, progress=False)
    options = dict(tile=32, overlap=8, precision="float32", augment=augment, batch_size=3)
    whole = predict_membrane(model, image, **options)
    tiles_per_slice = 3 * 4  # y tiles at 0, 24, 38; x at 0, 24, 48, 58
    # seams (none divides the volume), blocks a tile crosses two faces of (no seams), one block, seams again
    for block, seamed in [((4, 30, 40), True), ((3, 17, 64), False), ((9, 70, 90), True), ((4, 24, 24), True)]:
        stitched, seams, tiles, tiling = predict_blockwise(model, image, block, **options)
        np.testing.assert_array_equal(stitched, whole, err_msg=str(block))  # bit for bit
        assert tiling.seamed == seamed
        if seamed:
            assert tiles == tiles_per_slice * image.shape[0]  # every tile once
            assert seams.any() == (block != image.shape)
        else:
            assert tiles > tiles_per_slice * image.shape[0] and not seams.any()


def test_seams_are_the_overlap_where_blocks_are_multiples_of_the_tile_step():
    from neuropipe.ops.unet import MembraneTiling

    # tiles every 224 pixels: blocks of 224 along x take the overlap as their seams; along y, 256 do not
    tiling = MembraneTiling((8, 1024, 928), (8, 256, 224), tile=256, overlap=32)
    assert tiling.seamed and tiling.bands == (480 - 256, 32)  # the tile at 224 reaches 480
    core = ((0, 8), (256, 512), (224, 448))
    assert tiling.tiles(core) == ([448], [224])
    assert tiling.read_box(core) == ((0, 8), (256, 704), (224, 480))
    assert tiling.leads(core) == (480, 256)
    narrow = MembraneTiling((8, 1024, 1024), (8, 100, 1024), tile=256, overlap=32)
    assert not narrow.seamed and narrow.bands == (0, 0)
    assert narrow.tiles(((0, 8), (100, 200), (0, 1024)))[0] == [0]  # the tile over the block, computed again
    assert narrow.read_box(((0, 8), (100, 200), (0, 1024)))[1] == (0, 256)


def test_the_default_holds_out_two_slices_only_where_the_stack_is_large_enough():
    from neuropipe.ops.unet import MIN_SLICES_TO_VALIDATE

    tall = make_sample((MIN_SLICES_TO_VALIDATE, 48, 48), seed=2)
    held = train_membrane(tall.image, tall.membrane, iterations=2, **TINY).hyperparameters["validation_errors"]
    short = make_sample((MIN_SLICES_TO_VALIDATE - 1, 48, 48), seed=2)
    kept = train_membrane(short.image, short.membrane, iterations=2, **TINY).hyperparameters["validation_errors"]
    assert len(held) >= 1 and kept == []
