"""A multipart/form-data body as the parts its client sent, in the order sent.

Read with werkzeug's own streaming decoder (werkzeug/sansio/multipart.py `MultipartDecoder`),
not with `request.form`/`request.files`, for three things those get wrong for this API
(werkzeug 3.1):

- A part header that is not UTF-8 (a file name `café.png` in Latin-1 or cp1252, as curl on
  Windows may send it): the decoder reads each header line with a strict `bytes.decode()`
  (sansio/multipart.py:234, `_parse_headers`); the UnicodeDecodeError is a ValueError, which
  `FormDataParser.parse` swallows when `silent` (formparser.py:251-256, Flask's default) and
  answers with an empty form. The whole upload was dropped for a name the API never uses.
  Here a header line that is not UTF-8 is read as Latin-1 (RFC 9110 section 5.5: field
  values are octets; ISO-8859-1 is the historical reading), so the part is kept.
- Too many parts: the decoder raises the same bare `RequestEntityTooLarge` for more than
  `max_parts` parts (sansio/multipart.py:194) as `MultiPartParser.parse` does for a field
  over `max_form_memory_size` (formparser.py:398) and the request stream for a body over
  MAX_CONTENT_LENGTH, so a 413 could not say which. Parts are counted here, with their
  own message.
- Order: `request.form` and `request.files` are two dicts, so a field repeated as text and
  as file parts (`masks`) came back text first; here the parts keep the order sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from werkzeug.datastructures import Headers
from werkzeug.sansio.multipart import (Data, Epilogue, Field, File, MultipartDecoder,
                                       NeedData)

MAX_PARTS = 1000  # werkzeug's own default, Request.max_form_parts (wrappers/request.py:102)
CHUNK = 64 * 1024


class FormError(Exception):
    """The form cannot be read: `status` 400 (malformed) or 413 (too many parts, too big)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Part:
    name: str
    value: str | bytes  # a file part's bytes, a text part's text
    is_file: bool


class _Decoder(MultipartDecoder):
    def _parse_headers(self, data: bytes | bytearray) -> Headers:
        """A part's headers; a line that is not UTF-8 is read as Latin-1 instead of ending
        the whole form (werkzeug/sansio/multipart.py:234 decodes strictly)."""
        try:
            return super()._parse_headers(data)
        except UnicodeDecodeError:
            return super()._parse_headers(bytes(data).decode("latin-1").encode())


def read_parts(read: Callable[[int], bytes], boundary: str | None, max_bytes: int,
               max_parts: int = MAX_PARTS) -> list[Part]:
    """Every part of the body that `read` gives, in order. FormError (413) past `max_bytes`
    of body or `max_parts` parts, both checked as the body streams in, before it is all read;
    (400) for a body that is not multipart/form-data with this boundary."""
    if not boundary:
        raise FormError(400, "multipart/form-data needs a boundary in its Content-Type")
    try:
        decoder = _Decoder(boundary.encode("latin-1"), max_form_memory_size=max_bytes)
    except UnicodeEncodeError:
        raise FormError(400, "the multipart boundary is not ASCII") from None
    parts: list[Part] = []
    current: Field | File | None = None
    chunks: list[bytes] = []
    received = 0
    while True:
        data = read(CHUNK)
        received += len(data)
        if received > max_bytes:
            raise FormError(413, f"request body is larger than {max_bytes} bytes")
        decoder.receive_data(data or None)  # None: the body has ended
        try:
            event = decoder.next_event()
            while not isinstance(event, (NeedData, Epilogue)):
                if isinstance(event, (Field, File)):
                    if len(parts) >= max_parts:
                        raise FormError(413, f"the form has more than {max_parts} parts "
                                             "(fields and files); send fewer")
                    current, chunks = event, []
                elif isinstance(event, Data) and current is not None:
                    chunks.append(event.data)
                    if not event.more_data:
                        value = b"".join(chunks)
                        is_file = isinstance(current, File)
                        parts.append(Part(current.name, value if is_file else
                                          value.decode("utf-8", "replace"), is_file))
                        current, chunks = None, []
                event = decoder.next_event()
        except ValueError as exc:  # werkzeug's word for a malformed body
            raise FormError(400, f"the multipart/form-data body is malformed ({exc})") from None
        if isinstance(event, Epilogue) or not data:
            return parts
