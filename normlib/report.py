"""What a page of the book shows, and how its numbers reach the text.

- glue_value / glue_values / glue_figure / glue_html: every number, verdict and figure the book states
  is glued from an executed notebook (myst-nb glue), as plain Python values (NumPy scalars do not format).
- show: a table for a reader: no index column, short headers, numbers formatted, in a box that scrolls
  sideways when it is wider than the page; with a name it is also written as CSV next to the executed
  notebook (book/notebooks/data/<name>.csv), for the page's {download} link.
- show_parameters: the parameters a notebook ran with (not its source defaults), with their meaning.
"""
import html
import math

import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue

from normlib.paths import executed_dir, notebooks_dir, write_atomic


def glue_value(key, value):
    """Glue a plain Python value (NumPy scalars do not format in the book); returns nothing, so a
    cell ending in glue_value(...) shows no output."""
    if hasattr(value, "item"):
        value = value.item()
    glue(key, value, display=False)


def glue_values(values):
    """glue_value for every {key: value} of a dict."""
    for key, value in values.items():
        glue_value(key, value)


def glue_figure(key, fig):
    """Glue a Figure (not an Axes) for a {glue:figure} directive, then close it."""
    glue(key, fig, display=False)
    plt.close(fig)


def glue_html(key, text):
    """Glue HTML (e.g. a table or a list) that another page pastes with the {glue} directive and :doc:."""
    from IPython.display import HTML
    glue(key, HTML(text), display=False)


def _cell(v, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def table_html(table, digits=4):
    """A DataFrame as a compact HTML table: no index, numbers to `digits` significant digits, empty cells
    for missing values, inside <div class="normlab-table"> (the book's CSS lets it scroll sideways)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v, digits))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f'<div class="normlab-table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def write_csv(table, name):
    """The table as CSV at book/notebooks/data/<name>.csv (name: "<notebook>/<table>"); returns the path."""
    return write_atomic(executed_dir() / "data" / f"{name}.csv", table.to_csv(index=False))


def show(table, name=None, digits=4):
    """Display a reader's table (table_html); with name "<notebook>/<table>", also write it as CSV for the
    page's {download} link to data/<notebook>/<table>.csv."""
    from IPython.display import HTML, display
    if name:
        write_csv(table, name)
    display(HTML(table_html(table, digits)))


def parameter_meanings(notebook):
    """{name: (default source, comment)} of a notebook's parameters cell (papermill.inspect_notebook)."""
    import papermill
    source = notebooks_dir() / f"{notebook}.ipynb"
    declared = papermill.inspect_notebook(str(source)) if source.exists() else {}
    return {name: (d["default"], d["help"]) for name, d in declared.items()}


def parameters_table(notebook, P):
    """The parameters this execution ran with: name, value (marked when it differs from the notebook's
    own default) and meaning."""
    rows = []
    for name, (default, meaning) in parameter_meanings(notebook).items():
        value = P.get(name)
        text = repr(value) if isinstance(value, str) else str(value)
        try:
            changed = default != repr(value) and eval(default, {}, {}) != value  # noqa: S307 (a literal)
        except Exception:
            changed = True
        rows.append({"parameter": name, "value": text + (" (set by this run)" if changed else ""),
                     "meaning": meaning})
    return pd.DataFrame(rows)


def show_parameters(notebook, P):
    """Display the parameters table of this execution, and write it as data/<notebook>/parameters.csv."""
    show(parameters_table(notebook, P), f"{notebook}/parameters")
