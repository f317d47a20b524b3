"""What a name and a message may hold, so that every page can show them safely.

The store calls `checked_message` before it keeps anything. Each rule answers
something a classroom tried: names made of invisible characters, escape codes
that redraw a terminal, halves of emoji that can't be sent on, line separators
that JavaScript and JSON disagree about, and "Zalgo" text whose stacked accents
draw over the messages around it.
"""

import unicodedata

MAX_USER = 50
MAX_TEXT = 1000
# Unicode's stream-safe limit: no real text stacks more combining marks than this.
MAX_MARKS_IN_A_ROW = 30

# Characters that Unicode calls letters or symbols, but that show nothing:
# Hangul fillers and the blank Braille pattern, well known for blank names.
BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


def checked_message(user, text):
    """Return `user` and `text` trimmed, or raise ValueError saying what a person should fix."""
    # A class pastes code: the text keeps its line breaks and tabs; a name is one line.
    user = checked_text(user, "Name (user)", MAX_USER, lines=False)
    text = checked_text(text, "Message (text)", MAX_TEXT, lines=True)
    return user, text


def checked_text(value, name, limit, lines):
    """Return `value` trimmed (and with \\r\\n as \\n if it may hold `lines`), or raise ValueError."""
    if value is None:
        raise ValueError(f"{name} is missing.")
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text.")
    if lines:
        value = value.replace("\r\n", "\n")
    value = value.strip()
    if not value:
        raise ValueError(f"{name} must not be empty.")
    if len(value) > limit:
        raise ValueError(f"{name} is too long: {len(value)} characters, the limit is {limit}.")
    # A quick look first: printable ASCII, the usual case, breaks no rule below.
    if not (value.isascii() and value.isprintable()):
        check_characters(value, name, lines)
    # Letters, numbers, punctuation and symbols show; spaces, format characters
    # such as U+200B and marks on nothing don't.
    if not any(unicodedata.category(character)[0] in "LNPS" and character not in BLANK_LETTERS
               for character in value):
        raise ValueError(f"{name} must contain a visible character.")
    return value


def check_characters(value, name, lines):
    """Raise ValueError for characters no page should be sent: see each reason below."""
    allowed_controls = "\n\t" if lines else ""
    marks_in_a_row = 0
    for character in value:
        category = unicodedata.category(character)
        if category == "Cs":  # JSON's "\ud800" decodes to half a character, which can't be sent on
            raise ValueError(f"{name} contains an invalid character (half of a surrogate pair).")
        if category == "Cc" and character not in allowed_controls:
            allowed = "; line breaks and tabs are fine" if lines else ", such as line breaks"
            raise ValueError(f"{name} must not contain control characters{allowed}.")
        if category in ("Zl", "Zp"):  # U+2028 and U+2029 end lines in JavaScript, not in JSON
            raise ValueError(f"{name} must not contain line or paragraph separators (U+2028, U+2029).")
        marks_in_a_row = marks_in_a_row + 1 if category[0] == "M" else 0
        if marks_in_a_row > MAX_MARKS_IN_A_ROW:
            raise ValueError(f"{name} stacks more than {MAX_MARKS_IN_A_ROW} combining marks in a row.")
