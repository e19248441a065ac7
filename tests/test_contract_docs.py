"""The README documents the contract the loader enforces: same entities, same columns."""

import re
from pathlib import Path

from ml.contract import ENTITIES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def documented_columns(entity: str) -> list[str]:
    section = README.split(f"**{entity}**", 1)[1]
    table = section.split("\n\n")[1]
    return re.findall(r"^\| (\w+) \|", table, flags=re.MULTILINE)[1:]  # skip the header row


def test_readme_lists_every_contract_column_of_every_entity():
    for entity in ENTITIES:
        assert documented_columns(entity.name) == list(entity.column_names), entity.name


def test_readme_says_which_entities_are_required():
    for entity in ENTITIES:
        assert f"**{entity.name}** ({'required' if entity.required else 'optional'})" in README
