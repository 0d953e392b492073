from p2p.penalty import MAX_TRACKED, PenaltyBox


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_three_strikes_in_the_window_ban_then_the_ban_lapses():
    clock = FakeClock()
    box = PenaltyBox(strikes=3, window_s=60, ban_s=30, clock=clock)
    assert not box.strike("bad") and not box.strike("bad")
    assert not box.banned("bad")
    assert box.strike("bad")  # the third within the window starts a ban
    assert box.banned("bad") and not box.banned("good")
    clock.now += 29.9
    assert box.banned("bad")
    clock.now += 0.2
    assert not box.banned("bad")


def test_strikes_spread_out_do_not_ban():
    clock = FakeClock()
    box = PenaltyBox(strikes=3, window_s=60, ban_s=30, clock=clock)
    for _ in range(10):
        assert not box.strike("sloppy")
        clock.now += 31.0
    assert not box.banned("sloppy")


def test_memory_stays_bounded_under_made_up_peer_ids():
    box = PenaltyBox(strikes=2, window_s=60, ban_s=60, clock=FakeClock())
    for i in range(MAX_TRACKED * 3):
        box.strike(f"sybil-{i}")
        box.strike(f"sybil-{i}")
    assert len(box._recent) <= MAX_TRACKED and len(box._banned_until) <= MAX_TRACKED
