"""Audio: readers, resampling and downmix, fbank parity with AudioMAE's kaldi call, layouts and
speaker-independent splits, augmentation, bad inputs."""

import struct
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import DataLoader

from foundations.grid import GridConfig
from modalities.audio.adapter import AudioAdapter
from modalities.audio.data import (
    SYNTHETIC_CLASSES,
    AudioDataset,
    AudioOptions,
    SpecAugment,
    StreamedFbanks,
    build_domain,
    find_clips,
    load_clips,
    synthetic_sound,
)
from modalities.audio.io import fbank, fit_frames, read_audio
from modalities.common import DataError, DataSource, Sample, group_split
from modalities.shards import parse_size
from tasks.shards import convert

FSDD = "audio/fsdd_recordings"


def tone(seconds=0.5, rate=8000, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.mark.parametrize("suffix,subtype", [(".wav", "PCM_16"), (".flac", "PCM_24"), (".ogg", "VORBIS")])
def test_read_audio__formats_resampled_to_the_target_rate(tmp_path, suffix, subtype):
    sf.write(tmp_path / f"a{suffix}", tone(0.5, 8000), 8000, subtype=subtype)
    wave, rate, channels = read_audio(tmp_path / f"a{suffix}", 16000)
    assert (rate, channels) == (8000, 1) and abs(len(wave) - 8000) <= 1 and wave.dtype == torch.float32
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(int(spectrum.argmax()) * 16000 / len(wave) - 440) < 5  # the tone survives resampling


def test_read_audio__downmix_is_the_channel_mean(tmp_path):
    left, right = tone(0.25, 16000, 440), tone(0.25, 16000, 880)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave, rate, channels = read_audio(tmp_path / "s.wav", 16000)
    assert channels == 2
    torch.testing.assert_close(wave, torch.from_numpy((left + right) / 2))


def test_fbank__is_audiomaes_kaldi_call():
    wave = torch.from_numpy(synthetic_sound("chirp_up", np.random.default_rng(0), 16000))
    expected = torchaudio.compliance.kaldi.fbank(
        (wave - wave.mean())[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    assert torch.equal(fbank(wave, 16000, 128), expected) and expected.shape == (98, 128)


def test_fit_frames__crop_at_offset_or_pad_with_the_floor():
    f = torch.arange(10.0)[:, None].expand(10, 3)
    assert torch.equal(fit_frames(f, 4, offset=3)[:, 0], torch.tensor([3.0, 4, 5, 6]))
    padded = fit_frames(f, 12, floor=-5)
    assert padded.shape == (12, 3) and torch.equal(padded[10:], torch.full((2, 3), -5.0))


def wav_bytes(tag=1, rate=8000, bits=16, channels=1, samples=800) -> bytes:
    """A RIFF/WAVE file written by hand, so that its header can say what soundfile would not write."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    data = np.zeros(samples * channels, np.int16).tobytes()
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    "case,message",
    [
        ("corrupt", "cannot read audio"),
        ("empty", "empty audio"),
        ("silent", "silent clip"),
        ("nan", "NaN or infinite samples"),
        ("mpeg", r"unsupported sample format \(WAV format tag 0x0050"),
        ("no_rate", r"missing sample rate \(0 Hz"),
        ("truncated", "truncated: the header declares 1600 bytes of samples, the file holds 800"),
    ],
)
def test_bad_clips_are_named_or_skipped_and_counted(tmp_path, case, message):
    bad = tmp_path / "a" / "bad.wav"
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "ok.wav", tone(), 8000)
    if case == "corrupt":
        bad.write_bytes(b"RIFF\x00\x00garbage" * 20)
    elif case in ("mpeg", "no_rate"):  # a header libsndfile refuses: an MPEG codec tag, a 0 Hz rate
        bad.write_bytes(wav_bytes(tag=0x0050 if case == "mpeg" else 1, rate=0 if case == "no_rate" else 8000))
    elif case == "truncated":  # cut short mid-samples, as an interrupted copy leaves it
        bad.write_bytes(wav_bytes(samples=800)[:-800])
    else:
        data = {"empty": np.zeros(0), "silent": np.zeros(4000)}.get(case)
        if case == "nan":
            data = tone()
            data[100] = np.nan
        sf.write(bad, data.astype(np.float32), 8000, subtype="FLOAT")
    samples = [Sample(tmp_path / "a" / "ok.wav", "a"), Sample(bad, "a")]
    with pytest.raises(DataError, match=f"bad.wav: .*{message}"):
        load_clips(samples, AudioOptions(), skip_bad=False, progress=False)
    dataset, skipped, _ = load_clips(samples, AudioOptions(), skip_bad=True, progress=False)
    assert len(dataset) == 1 and skipped[0][0] == str(bad)


def test_clip_shorter_than_one_patch_is_padded_and_counted(tmp_path):
    sf.write(tmp_path / "short.wav", tone(0.1), 8000)  # 8 frames of 10 ms
    dataset, _, short = load_clips([Sample(tmp_path / "short.wav", "a")], AudioOptions(), False, progress=False)
    assert short == [str(tmp_path / "short.wav")] and dataset[0]["x"].shape == (1, 128, 128)


def test_find_clips__fsdd_names_give_label_and_speaker(shared):
    samples = find_clips(shared / FSDD)
    assert len(samples) == 2000 and {s.label for s in samples} == {str(d) for d in range(10)}
    assert {s.group for s in samples} == {"george", "jackson", "lucas", "nicolas"}


def test_find_clips__labels_csv_group_column_and_bad_flat_names(tmp_path):
    for i in range(4):
        sf.write(tmp_path / f"c{i}.wav", tone(), 8000)
    (tmp_path / "labels.csv").write_text("path,label,group\nc0.wav,a,p1\nc1.wav,b,p1\nc2.wav,a,p2\nc3.wav,b,p2\n")
    assert [(s.label, s.group) for s in find_clips(tmp_path)] == [("a", "p1"), ("b", "p1"), ("a", "p2"), ("b", "p2")]
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(DataError, match=r"c0.wav: a flat folder needs names"):
        find_clips(tmp_path)


def test_group_split__no_source_on_both_sides_and_at_least_one_held_out():
    sources = ["george", "jackson", "lucas", "nicolas"] * 5
    train, held = group_split(sources, 0.2, seed=0)
    assert len({sources[i] for i in held}) == 1 and not {sources[i] for i in held} & {sources[i] for i in train}
    with pytest.raises(DataError, match="at least two"):
        group_split(["one"] * 3, 0.2, seed=0)


def test_build_domain__fsdd_speaker_split_and_normalisation(shared):
    opts = AudioOptions(split_by="speaker")
    data = build_domain(DataSource(str(shared / FSDD), progress=False), opts)
    assert data.info["train_clips"] == 1500 and data.info["eval_clips"] == 500
    assert len(data.info["held_out_sources"]) == 1 and not set(data.train_eval.sources) & set(data.held_out.sources)
    assert tuple(data.adapter["size"]) == (128, 128) and -20 < data.adapter["mean"][0] < 0 < data.adapter["std"][0]
    assert data.held_out[0]["x"].shape == (1, 128, 128)


def test_adapter__clips_of_any_length_through_the_same_weights():
    adapter = AudioAdapter(GridConfig(1, (16, 16), (128, 128), (-6.0,), (4.0,)), 32)
    short, long = adapter.embed(torch.randn(2, 1, 64, 128)), adapter.embed(torch.randn(2, 1, 1024, 128))
    assert short.tokens.shape == (2, 32, 32) and long.tokens.shape == (2, 512, 32)
    torch.testing.assert_close(long.coords[0, :32], short.coords[0])  # the same (time, frequency) grid


def test_adapter__features_keep_the_frequency_bands():
    """Pooled features are the time-averaged token of each frequency band, band after band: the
    filterbank's spectral shape survives (a plain mean over tokens would mix the bands)."""
    adapter = AudioAdapter(GridConfig(1, (16, 16), (128, 64), (-6.0,), (4.0,), keep_last_axis=True), 32)
    for frames in (64, 256):  # any clip length: the same feature size
        x = torch.randn(2, 1, frames, 64)
        coords = adapter.embed(x).coords  # (B, N, 2): (time, frequency) index of every token
        tokens = coords[..., 1:2].expand(-1, -1, 32) + coords[..., :1] * 0.0  # a token holds its band index
        features = adapter.pool(tokens, x)
        assert features.shape == (2, 4 * 32) == (2, adapter.pooled_dim(32))
        torch.testing.assert_close(features.view(2, 4, 32), torch.arange(4.0)[None, :, None].expand(2, 4, 32))
    with pytest.raises(ValueError, match="last axis at 64"):
        adapter.pool(tokens[:, :8], torch.randn(2, 1, 64, 32))


def test_synthetic_set__every_class_is_a_distinct_sound():
    rng = np.random.default_rng(0)
    spectra = {}
    for name in SYNTHETIC_CLASSES:
        wave = synthetic_sound(name, rng, 16000)
        assert wave.shape == (16000,) and 0.05 < np.abs(wave).max() < 1.0
        spectra[name] = fbank(torch.from_numpy(wave), 16000).mean(0)
    names = list(spectra)
    assert all(not torch.allclose(spectra[a], spectra[b]) for a in names for b in names if a != b)


def test_spec_augment__masks_bands_and_rolls_time():
    torch.manual_seed(0)
    x = torch.arange(64 * 32, dtype=torch.float32).view(1, 64, 32)
    rolled = SpecAugment(roll=True)(x)
    assert not torch.equal(rolled, x) and torch.equal(rolled.sort(dim=1).values, x.sort(dim=1).values)
    masked = SpecAugment(roll=False, time_mask=10, freq_mask=8)(x)
    assert (masked == x.mean()).any() and masked.shape == x.shape


def test_find_clips__esc50_folds_and_source_groups(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (fold, cat) in enumerate([(1, "dog"), (1, "rain"), (5, "dog"), (5, "rain")]):
        sf.write(tmp_path / "audio" / f"{fold}-{i}-A-0.wav", tone(), 8000)
        rows.append(f"{fold}-{i}-A-0.wav,{fold},0,{cat},False,{i},A")
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    samples = find_clips(tmp_path, fold=5)
    assert [(s.label, s.split) for s in samples] == [
        ("dog", "train"),
        ("rain", "train"),
        ("dog", "test"),
        ("rain", "test"),
    ]
    assert [s.split for s in find_clips(tmp_path, fold=1)] == ["test", "test", "train", "train"]
    with pytest.raises(DataError, match="no fold 3"):
        find_clips(tmp_path, fold=3)


def test_find_clips__speech_commands_lists_and_speakers(tmp_path, caplog):
    for cls in ("yes", "no", "_background_noise_"):
        (tmp_path / cls).mkdir()
        for spk in ("aa11", "bb22"):
            sf.write(tmp_path / cls / f"{spk}_nohash_0.wav", tone(), 8000)
    (tmp_path / "validation_list.txt").write_text("yes/bb22_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("no/bb22_nohash_0.wav\n")
    samples = find_clips(tmp_path)
    got = {(s.label, s.group): s.split for s in samples}
    assert got == {("no", "aa11"): "train", ("no", "bb22"): "test", ("yes", "aa11"): "train", ("yes", "bb22"): "val"}
    with caplog.at_level("INFO"):
        data = build_domain(DataSource(str(tmp_path), progress=False), AudioOptions())
    assert data.data_card == "data_cards/speech_commands.md"  # known by its layout, not its folder name
    assert "clips at {8000: 4} Hz (count) are resampled to 16000 Hz" in caplog.text


def test_build_domain__the_datas_own_split_comes_first(tmp_path):
    for cls in ("a", "b"):
        for split in ("train", "test"):
            (tmp_path / cls / split).mkdir(parents=True)
            for i in range(2):
                sf.write(tmp_path / cls / split / f"{i}.wav", tone(freq=300 + 100 * i), 8000)
    data = build_domain(DataSource(str(tmp_path), progress=False), AudioOptions())
    assert (data.info["train_clips"], data.info["eval_clips"]) == (4, 4)
    assert all("/test/" in s for s in data.held_out.sources)


def test_multi_label__labels_csv_with_several_labels_per_clip(tmp_path):
    rows = ["path,label"]
    for i, label in enumerate(["dog", "dog;rain", "rain", "rain;wind", "wind", "dog;wind"] * 2):
        sf.write(tmp_path / f"c{i}.wav", tone(freq=200 + 50 * i), 8000)
        rows.append(f"c{i}.wav,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = build_domain(DataSource(str(tmp_path), progress=False), AudioOptions())
    assert data.multi_label and data.classes == ["dog", "rain", "wind"]
    ys = {tuple(data.train_eval[i]["y"].tolist()) for i in range(len(data.train_eval))}
    assert ys <= {(1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 1)} and len(ys) > 2


def test_pooled__mean_and_std_over_each_clips_real_frames():
    features = [torch.randn(30, 8), torch.randn(5, 8) + 3, torch.randn(1, 8)]  # one clip of a single frame
    dataset = AudioDataset(features, ["a", "b", "a"], ["a", "b"], ["s0", "s1", "s2"], [None] * 3, frames=16)
    x, y = dataset.pooled()
    assert x.shape == (3, 16) and y.tolist() == [0, 1, 0]
    torch.testing.assert_close(x[1], torch.cat([features[1].mean(0), features[1].std(0)]))  # no padding counted
    torch.testing.assert_close(x[2, 8:], torch.zeros(8))


def test_large_datasets_stream_their_filterbanks_through_workers(tmp_path):
    """Beyond --cache-mb the clips are read per item (in DataLoader workers) and give exactly the
    items the in-memory dataset gives; bad headers are still caught up front."""
    (tmp_path / "a").mkdir()
    for i in range(4):
        sf.write(tmp_path / "a" / f"{i}.wav", tone(0.3 + 0.1 * i, freq=300 + 100 * i), 8000)
    (tmp_path / "a" / "bad.wav").write_bytes(wav_bytes(rate=0))
    samples = [Sample(p, "a") for p in sorted((tmp_path / "a").glob("*.wav"))]
    kept, skipped, _ = load_clips(samples, AudioOptions(frames=32), skip_bad=True, progress=False)
    streamed, skipped_too, _ = load_clips(samples, AudioOptions(frames=32, cache_mb=0), skip_bad=True, progress=False)
    assert isinstance(streamed.features, StreamedFbanks) and isinstance(kept.features, list)
    assert [p for p, _ in skipped_too] == [p for p, _ in skipped] == [str(tmp_path / "a" / "bad.wav")]
    part = streamed.subset([3, 1])
    assert isinstance(part.features, StreamedFbanks)
    loader = torch.utils.data.DataLoader(part, batch_size=2, num_workers=2)
    torch.testing.assert_close(next(iter(loader))["x"], torch.stack([kept[3]["x"], kept[1]["x"]]))
    assert streamed.statistics() == pytest.approx(kept.statistics())


def test_multi_label__every_split_of_a_multi_label_task_gives_label_vectors():
    """A held-out part whose clips happen to carry one label each still gives (classes,) 0/1 targets."""
    features = [torch.randn(20, 8) for _ in range(3)]
    dataset = AudioDataset(features, ["a;b", "a", "b"], ["a", "b"], ["s0", "s1", "s2"], [None] * 3, frames=16)
    held = dataset.subset([1, 2])
    assert held.multi_label and held[0]["y"].tolist() == [1.0, 0.0] and held.pooled()[1].shape == (2, 2)


# ------------------------------------------------------------------------------------------ shards
SHARD_OPTS = AudioOptions(frames=32, mel_bins=32, patch=16)


def clip_folder(root, layout: str) -> tuple[DataSource, AudioOptions]:
    """Clips of 0.1 to 1.3 s (8 to 128 frames: padded or cropped to 32) in one of three layouts:
    class folders with a silent clip (skipped: it shifts the sources of the split), the same with a
    held-out folder, or labels.csv with several labels a clip and three speakers."""
    if layout == "multi_label":
        root.mkdir(parents=True)
        rows = ["path,label,group"]
        for i, label in enumerate(["dog", "dog;rain", "rain", "rain;wind", "wind", "dog;wind"] * 2):
            sf.write(root / f"c{i}.wav", tone(0.1 + 0.1 * i, freq=200 + 50 * i), 8000)
            rows.append(f"c{i}.wav,{label},p{i % 3}")
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
        return DataSource(str(root), progress=False), replace(SHARD_OPTS, split_by="speaker")
    for part, n in (("data", 5), ("eval", 2)):
        for c, cls in enumerate(("a", "b", "c")):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                sf.write(root / part / cls / f"{i}.wav", tone(0.1 + 0.3 * i, freq=300 + 200 * c + 40 * i), 8000)
    if layout == "eval_data":
        return DataSource(str(root / "data"), str(root / "eval"), progress=False), SHARD_OPTS
    sf.write(root / "data" / "a" / "0_silent.wav", np.zeros(4000, np.float32), 8000)
    return DataSource(str(root / "data"), skip_bad_files=True, progress=False), SHARD_OPTS


@pytest.mark.parametrize("layout", ["folders_a_silent_clip_skipped", "eval_data", "multi_label"])
def test_shards__hold_what_the_recipe_reads_from_the_folder(tmp_path, layout):
    source, opts = clip_folder(tmp_path / "data", layout)
    loose = build_domain(source, opts)
    index = convert("audio", source, opts, tmp_path / "shards", parse_size("40kB"))
    shards = build_domain(replace(source, data=str(tmp_path / "shards"), eval_data=None), opts)
    assert len(index["splits"]["train"]) > 1 and len(index["skipped"]) == loose.info["skipped_files"]
    assert (shards.classes, shards.multi_label) == (loose.classes, loose.multi_label)
    assert (shards.preprocessing, shards.data_card) == (loose.preprocessing, loose.data_card)
    stats = ("mean", "std")  # summed as written: equal to rounding
    assert {k: v for k, v in shards.adapter.items() if k not in stats} == {
        k: v for k, v in loose.adapter.items() if k not in stats
    }
    for k in stats:
        assert shards.adapter[k] == pytest.approx(loose.adapter[k], rel=1e-9)
    same = ("train_clips", "eval_clips", "held_out_sources", "short_clips_padded")
    assert {k: shards.info[k] for k in same} == {k: loose.info[k] for k in same} and loose.info["short_clips_padded"]
    for split in ("train_eval", "held_out"):
        a, b = getattr(loose, split), getattr(shards, split)
        assert len(a) == len(b) >= 2 and (a.labels, a.sources, a.splits) == (b.labels, b.sources, b.splits)
        assert all(torch.equal(fa, fb) for fa, fb in zip(a.features, b.features, strict=True))
        for i in range(len(a)):
            assert torch.equal(a[i]["x"], b[i]["x"]) and torch.equal(
                torch.as_tensor(a[i]["y"]), torch.as_tensor(b[i]["y"])
            )
        torch.testing.assert_close(shards.raw_features(b), loose.raw_features(a))


def test_shards__the_stream_crops_and_masks_as_the_pretraining_set(tmp_path):
    source, opts = clip_folder(tmp_path / "data", "multi_label")
    loose = build_domain(source, opts)
    convert("audio", source, opts, tmp_path / "shards", parse_size("40kB"))
    stream = build_domain(DataSource(str(tmp_path / "shards"), progress=False), opts).pretrain
    batch = next(iter(DataLoader(stream.split(0, 1, 4), batch_size=4, num_workers=1)))
    assert batch["x"].shape == (4, *loose.pretrain[0]["x"].shape) == (4, 1, 32, 32)
    assert batch["y"].shape == (4, 3)  # multi-label: a 0/1 vector of the classes per clip
    for sample in list(stream.samples())[:4]:
        torch.manual_seed(7)
        expected = loose.pretrain[sample["json"]["order"]]
        torch.manual_seed(7)
        got = stream.decode(sample)
        assert torch.equal(got["x"], expected["x"]) and torch.equal(got["y"], expected["y"])


def test_shards__read_with_other_options_is_a_clear_error(tmp_path):
    source, opts = clip_folder(tmp_path / "data", "eval_data")
    convert("audio", source, opts, tmp_path / "shards", parse_size("1MB"))
    where = DataSource(str(tmp_path / "shards"), progress=False)
    with pytest.raises(DataError, match=r"written with --mel-bins 32, --split-by file; run with those or convert"):
        build_domain(where, replace(opts, mel_bins=64, split_by="speaker"))
    longer = build_domain(where, replace(opts, frames=64))  # windows are cut when an item is drawn: any --frames
    assert longer.held_out[0]["x"].shape == longer.pretrain.decode(next(longer.pretrain.samples()))["x"].shape
    assert longer.held_out[0]["x"].shape == (1, 64, 32)
