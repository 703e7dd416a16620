"""Flicker test: a noisy per-frame detector must give one finding per event, and none for isolated blips."""

from edge.inference.smoothing import Hysteresis
from edge.inference.tasks import Detection


def _det(conf: float) -> list[Detection]:
    return [Detection("free_fluid", conf, conf >= 0.5, False)] if conf >= 0.5 else []


def _feed(h: Hysteresis, pattern: str, confs=None):
    events = []
    for i, c in enumerate(pattern):
        conf = (confs[i] if confs else 0.8) if c == "1" else 0.1
        events += h.update(i, _det(conf))
    return events


def test_flickering_event_gives_one_finding():
    # one real event (frames 10-40) with dropouts, plus isolated false positives before and after
    pattern = "0010000000" + "1101110111011110110111101111011" + "0000000100000010000"
    events = _feed(Hysteresis(on_frames=3, off_frames=5, window=5), pattern)
    assert len(events) == 1
    ev = events[0]
    assert ev.first_frame == 10 and 10 <= ev.last_frame <= 14
    # raw per-frame output would have "turned on" many times
    raw_onsets = sum(1 for i in range(1, len(pattern)) if pattern[i] == "1" and pattern[i - 1] == "0")
    assert raw_onsets > 8


def test_two_separate_events_give_two_findings_with_peak_confidence():
    pattern = "11111" + "0" * 8 + "1111"
    confs = [0.6, 0.9, 0.7, 0.6, 0.6] + [0.1] * 8 + [0.55, 0.65, 0.8, 0.7]
    events = _feed(Hysteresis(on_frames=3, off_frames=5, window=5), pattern, confs)
    assert [e.frame_range for e in events] == [(0, 2), (13, 15)]
    assert events[0].confidence == 0.9 and events[1].confidence == 0.8
    assert [e.peak_frame for e in events] == [1, 15]  # where the reported measurements come from


def test_short_gap_does_not_split_an_event_but_long_gap_does():
    h = Hysteresis(on_frames=2, off_frames=4, window=2)
    assert len(_feed(h, "11" + "000" + "11")) == 1  # gap of 3 < off_frames
    h = Hysteresis(on_frames=2, off_frames=4, window=2)
    assert len(_feed(h, "11" + "0000" + "11")) == 2


def test_isolated_blips_never_confirm():
    assert _feed(Hysteresis(on_frames=3, off_frames=5, window=5), "1000100010001") == []


def test_episode_mode_reports_the_whole_episode_when_it_ends():
    """A recorded cine: one finding per episode, first to last positive frame, peak over all of it."""
    pattern = "0011111011111100000000" + "111"
    confs = [0.1] * 2 + [0.6, 0.7, 0.6, 0.6, 0.6, 0.1, 0.6, 0.95, 0.6, 0.6, 0.6, 0.6] + [0.1] * 8 + [0.7, 0.8, 0.9]
    h = Hysteresis(on_frames=3, off_frames=5, window=5, emit="episode")
    events = []
    for i, c in enumerate(pattern):
        got = h.update(i, _det(confs[i] if c == "1" else 0.1))
        assert all(e.last_frame < i for e in got)  # reported after its end, never at onset
        events += got
    events += h.flush()  # the object's last frame: the second episode is still running
    assert [e.frame_range for e in events] == [(2, 13), (22, 24)]
    assert events[0].confidence == 0.95 and events[0].peak_frame == 9
    assert events[1].confidence == 0.9 and h.flush() == []
    # the same frames in onset mode (a live stream) alert at confirmation instead
    onset = _feed(Hysteresis(on_frames=3, off_frames=5, window=5), pattern, confs)
    assert [e.frame_range for e in onset] == [(2, 4), (22, 24)]


def test_episode_reports_the_largest_extent_with_the_peak_confidence():
    h = Hysteresis(on_frames=2, off_frames=2, window=3, emit="episode")
    areas, confs = [10.0, 40.0, 25.0, 12.0], [0.7, 0.8, 0.99, 0.6]
    for i, (a, c) in enumerate(zip(areas, confs, strict=True)):
        assert h.update(i, [Detection("free_fluid", c, True, False, measurements={"area_mm2": a})]) == []
    (ev,) = h.update(4, []) + h.update(5, [])
    det, frame = ev.summary()
    assert ev.frame_range == (0, 3) and frame == 1 and det.measurements["area_mm2"] == 40.0
    assert det.confidence == 0.99 and ev.peak_frame == 2
