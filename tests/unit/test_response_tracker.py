"""The proxy's SSE tracker must not depend on how the upstream's bytes are split into reads."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from costpipe.collectors.proxy import ResponseTracker


def _stream(tokens: int, crlf: bool) -> bytes:
    sep = "\r\n\r\n" if crlf else "\n\n"
    events = [{"model": "m-1", "choices": [{"delta": {"role": "assistant", "content": ""}}],
               "usage": None}]
    events += [{"model": "m-1", "choices": [{"delta": {"content": f"t{i}"}}], "usage": None}
               for i in range(tokens)]
    events.append({"model": "m-1", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": tokens}})
    return "".join(f"data: {json.dumps(e)}{sep}" for e in events).encode() + \
        f"data: [DONE]{sep}".encode()


def _feed(data: bytes, cuts: list[int], strip: bool) -> tuple[ResponseTracker, bytes]:
    tracker = ResponseTracker(sse=True, strip_usage_chunk=strip, start=0.0)
    out = bytearray()
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += tracker.feed(data[last:cut])
        last = cut
    out += tracker.finish(None)
    return tracker, bytes(out)


@settings(max_examples=200, deadline=None)
@given(tokens=st.integers(0, 6), crlf=st.booleans(), strip=st.booleans(), data=st.data())
def test_any_split_of_the_stream_gives_the_same_counts_and_output(
        tokens: int, crlf: bool, strip: bool, data: st.DataObject) -> None:
    stream = _stream(tokens, crlf)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    whole, whole_out = _feed(stream, [], strip)
    split, split_out = _feed(stream, cuts, strip)
    assert (split.content_events, split.usage, split.model) == (
        whole.content_events, whole.usage, whole.model)
    assert whole.content_events == tokens and whole.usage == {
        "prompt_tokens": 3, "completion_tokens": tokens}
    assert split_out == whole_out
    if strip:  # the usage-only chunk the proxy asked for is hidden; the rest is intact
        assert b'"completion_tokens"' not in whole_out
        assert whole_out.count(b"data:") == tokens + 2
    else:  # nothing stripped: every byte is forwarded, in order, whatever the split
        assert split_out == stream
