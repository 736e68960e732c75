"""The fixed vocabulary of per-row fetch statuses.

Every row that goes through image fetching ends with exactly one ``status``:

==========================  ======================================================  ==========
status                      meaning                                                  counted as
==========================  ======================================================  ==========
``success``                 the image was fetched, decoded, checked and encoded      success
``invalid_url``             empty, malformed or non-canonical URL (never sent)        download
``unsupported_scheme``      not http/https (ftp:, file:, data:, ...)                  download
``ssrf_blocked``            the host is or resolves to a loopback, private,           download
                            link-local, multicast or reserved address (also after
                            a redirect), and private networks were not allowed
``dns_error``               the host name does not resolve                            download
``connection_error``        refused, reset or otherwise broken connection             download
``tls_error``               HTTPS failed: untrusted, expired or wrong-host            download
                            certificate, or no common TLS version (never retried)
``timeout``                 connect, read or total timeout                            download
``http_<code>``             the final HTTP status was not 2xx, e.g. ``http_404``,     download
                            ``http_429`` (after retries / a too long Retry-After)
``too_many_redirects``      more redirects than ``max_redirects``                     download
``redirect_loop``           a redirect chain came back to a URL it already visited    download
``too_large``               the body exceeded ``max_body_bytes`` (checked while       download
                            streaming; Content-Length is not trusted)
``truncated``               the body ended before its announced length                download
``robots_optout``           ``X-Robots-Tag`` carried a disallowed directive           download
                            (``noai``, ``noimageai``, ``noindex``, ``noimageindex``)
``hash_mismatch``           the downloaded bytes do not match the expected hash       download
``not_an_image``            the body's magic bytes are no image format (HTML, empty)  resize
``decode_error``            the image format is known but the data cannot be decoded  resize
``decompression_bomb``      the image declares more pixels than ``max_pixels``        resize
``decode_too_large``        decoding (and converting to RGB) would take more memory   resize
                            than ``max_decode_bytes`` (width * height * bytes per
                            pixel, estimated from the header, nothing decoded)
``image_too_small``         a side is below ``min_image_size``                        resize
``image_area_too_large``    width * height is above ``max_image_area``                resize
``aspect_ratio_too_large``  max(w, h) / min(w, h) is above ``max_aspect_ratio``       resize
``encode_error``            re-encoding the image failed                              resize
``internal_error``          an unexpected bug; the message says where (report it)     download
==========================  ======================================================  ==========

"download" statuses count in ``failed_to_download``, "resize" ones in
``failed_to_resize`` (img2dataset's two failure counters); ``status_dict`` counts every
status, so ``successes + failed_to_download + failed_to_resize == count`` always.
"""

from __future__ import annotations

SUCCESS = "success"
INVALID_URL = "invalid_url"
UNSUPPORTED_SCHEME = "unsupported_scheme"
SSRF_BLOCKED = "ssrf_blocked"
DNS_ERROR = "dns_error"
CONNECTION_ERROR = "connection_error"
TLS_ERROR = "tls_error"
TIMEOUT = "timeout"
TOO_MANY_REDIRECTS = "too_many_redirects"
REDIRECT_LOOP = "redirect_loop"
TOO_LARGE = "too_large"
TRUNCATED = "truncated"
ROBOTS_OPTOUT = "robots_optout"
HASH_MISMATCH = "hash_mismatch"
NOT_AN_IMAGE = "not_an_image"
DECODE_ERROR = "decode_error"
DECOMPRESSION_BOMB = "decompression_bomb"
DECODE_TOO_LARGE = "decode_too_large"
IMAGE_TOO_SMALL = "image_too_small"
IMAGE_AREA_TOO_LARGE = "image_area_too_large"
ASPECT_RATIO_TOO_LARGE = "aspect_ratio_too_large"
ENCODE_ERROR = "encode_error"
INTERNAL_ERROR = "internal_error"

#: Statuses counted in ``failed_to_resize`` (the image arrived but could not be used).
RESIZE_FAILURES = frozenset(
    {
        NOT_AN_IMAGE,
        DECODE_ERROR,
        DECOMPRESSION_BOMB,
        DECODE_TOO_LARGE,
        IMAGE_TOO_SMALL,
        IMAGE_AREA_TOO_LARGE,
        ASPECT_RATIO_TOO_LARGE,
        ENCODE_ERROR,
    }
)

#: Every fixed status; ``http_<code>`` statuses come in addition.
STATUSES = (
    SUCCESS,
    INVALID_URL,
    UNSUPPORTED_SCHEME,
    SSRF_BLOCKED,
    DNS_ERROR,
    CONNECTION_ERROR,
    TLS_ERROR,
    TIMEOUT,
    TOO_MANY_REDIRECTS,
    REDIRECT_LOOP,
    TOO_LARGE,
    TRUNCATED,
    ROBOTS_OPTOUT,
    HASH_MISMATCH,
    NOT_AN_IMAGE,
    DECODE_ERROR,
    DECOMPRESSION_BOMB,
    IMAGE_TOO_SMALL,
    IMAGE_AREA_TOO_LARGE,
    ASPECT_RATIO_TOO_LARGE,
    ENCODE_ERROR,
    INTERNAL_ERROR,
    DECODE_TOO_LARGE,
)

#: Permanent failures cached negatively (with a time to live) by default.
DEFAULT_NEGATIVE_STATUSES = frozenset({"http_404", "http_410", ROBOTS_OPTOUT})


def http_status(code: int) -> str:
    """The status of a final non-2xx HTTP answer, e.g. ``http_404``."""
    return f"http_{int(code)}"


def is_known(status: str) -> bool:
    """Whether ``status`` belongs to the vocabulary (a fixed one or ``http_<3 digits>``)."""
    return status in STATUSES or (status.startswith("http_") and status[5:].isdigit() and len(status) == 8)


def summarize(statuses: "list[str] | object") -> dict:
    """img2dataset-style counters for a sequence (or pyarrow array) of statuses.

    Returns ``count, successes, failed_to_download, failed_to_resize, status_dict``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = statuses if isinstance(statuses, (pa.Array, pa.ChunkedArray)) else pa.array(list(statuses), pa.string())
    counts = pc.value_counts(arr).to_pylist() if len(arr) else []
    status_dict = {c["values"]: int(c["counts"]) for c in counts}
    successes = status_dict.get(SUCCESS, 0)
    resize = sum(n for s, n in status_dict.items() if s in RESIZE_FAILURES)
    total = int(len(arr))
    return {
        "count": total,
        "successes": successes,
        "failed_to_download": total - successes - resize,
        "failed_to_resize": resize,
        "status_dict": dict(sorted(status_dict.items(), key=lambda kv: (-kv[1], str(kv[0])))),
    }
