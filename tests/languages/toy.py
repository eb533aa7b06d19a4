"""A toy language ``xx`` written into a temporary folder, as a technician would add one.

English texts with a marker word in front, so a test can tell them from English; read by
espeak-ng's English voice; its grammar is the English one with another way of telling time.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import appliance.languages

#: Every prompt of the toy language starts with this word.
MARKER = "Toy"
_EN = Path(appliance.languages.__file__).parent / "en"


def make_toy_language(root: Path, code: str = "xx") -> Path:
    """Write the folder ``root/code`` (a copy of English, marked) and return it."""
    folder = root / code
    folder.mkdir(parents=True)
    prompts = (_EN / "prompts.toml").read_text(encoding="utf-8")
    # Every `name = "text"` line of [texts] gets the marker in front of its text.
    prompts = re.sub(r'^(\w+) = "', rf'\1 = "{MARKER} ', prompts, flags=re.MULTILINE)
    (folder / "prompts.toml").write_text(prompts, encoding="utf-8")
    language = (_EN / "language.toml").read_text(encoding="utf-8")
    language = language.replace('name = "English"', 'name = "Toy"').replace(
        'title = "CALL RECORD', f'title = "{MARKER.upper()} CALL RECORD')
    (folder / "language.toml").write_text(language, encoding="utf-8")
    shutil.copy(_EN / "grammar.py", folder / "grammar.py")
    with (folder / "grammar.py").open("a", encoding="utf-8") as grammar:
        grammar.write('\n\ndef spoken_time(hour: int, minute: int) -> str:  # noqa: F811\n'
                      '    return f"{hour} hours {minute} minutes"\n')
    return folder
