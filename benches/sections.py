"""Sections of BENCHMARKS.md that their own benchmark script renders
(benches/fleet.sh, benches/devices.sh), between `<!-- NAME:start -->` and
`<!-- NAME:end -->`: spliced in by that script, kept as they are by
benches/report.py when it renders the rest. Standard library only.
"""
import os


def markers(name):
    """The start and end markers of section name."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def splice(markdown, text, name):
    """markdown with section name replaced by text (appended if absent)."""
    start, end = markers(name)
    if start in markdown and end in markdown:
        head, rest = markdown.split(start, 1)
        _, tail = rest.split(end, 1)
        return head + text + tail
    return markdown.rstrip("\n") + "\n\n" + text + "\n"


def kept(markdown_path, name):
    """Section name as it is in markdown_path, or None."""
    if not os.path.exists(markdown_path):
        return None
    start, end = markers(name)
    with open(markdown_path) as f:
        text = f.read()
    if start in text and end in text:
        return start + text.split(start, 1)[1].split(end, 1)[0] + end
    return None


def write(markdown_path, text, name):
    """Splice text into the file at markdown_path as section name."""
    with open(markdown_path) as f:
        markdown = f.read()
    with open(markdown_path, "w") as f:
        f.write(splice(markdown, text, name))
