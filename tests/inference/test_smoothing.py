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
    assert ev.first_frame == 10 and 10 <= ev.confirm_frame <= 14
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
