"""The prepare step: validate, dedup, filter, mix, split and render a fine-tuning dataset.

See README.md in this folder for what each stage does and the output record schema.
"""

from components.prepare.problems import PrepareError
from components.prepare.readers import InputFile
from components.prepare.step import PrepareResult, run, to_row

__all__ = ["InputFile", "PrepareError", "PrepareResult", "run", "to_row"]
