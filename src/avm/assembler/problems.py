"""What goes wrong with a template, and how it is reported.

The assembler's two errors and the record they carry live in :mod:`avm.errors`, with every
other error of AVM; this module re-exports them for the assembler's own code:

- :class:`Problem`: one thing wrong with a template, located (file, line, column, the field path)
  and explained (what was expected, what was found, and a hint where one helps);
- :class:`TemplateError`: a template (or image) was rejected; it carries *every* problem found,
  sorted by position, so an author fixes them in one pass instead of one run per mistake;
- :class:`ProgramError`: a template program failed while running, on data only known then (a
  field missing from a tool's reply, a list longer than its loop's bound); it names the template
  and the step.

Both errors are :class:`avm.AvmError` subclasses, so the CLI reports them like any other.
"""

from __future__ import annotations

from avm.errors import Problem, ProgramError, TemplateError

__all__ = ["Problem", "ProgramError", "TemplateError"]
