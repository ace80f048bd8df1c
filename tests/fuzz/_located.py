"""The one check both file fuzzers share: an error message whose every line reads
``file:line: field: problem``, with a line inside the file."""

from __future__ import annotations

import re
from collections.abc import Collection


def check_located_error(exc: Exception, text: str, name: str, whole_file: Collection[str] = ()) -> None:
    """``whole_file``: problems of the whole file, which have no field to name."""
    message = str(exc)
    assert message, f"an empty {type(exc).__name__}"
    line_re = re.compile(rf"^{re.escape(name)}:(\d+): (.+)$")
    for line in message.split("\n"):
        m = line_re.match(line)
        assert m, f"not `file:line: ...`: {line!r}"
        number, rest = int(m.group(1)), m.group(2)
        assert 1 <= number <= text.count("\n") + 1, (number, line)
        assert rest in whole_file or re.match(r"^\S[^\n]*?: \S", rest), f"not `field: problem`: {line!r}"
        assert "Traceback" not in rest
