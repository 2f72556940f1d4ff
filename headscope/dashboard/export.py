"""Export: every panel's data as CSV or JSON, in the browser.

`components.graph()` and `components.stats_table()` put two small buttons
under each panel (`export_controls`); `EXPORT_SCRIPT`, inlined into the page
(`theme.index_string`), answers their clicks for every page at once (no
callback to register, no round trip): it reads the figure plotly drew, so the
file holds exactly what the panel shows, and downloads it.

CSV is tidy, one row per heatmap cell or per point:

    panel, trace, name, type, i, j, x, y, z, customdata, text, x_title, y_title, z_title

(`i`, `j`: row and column of a heatmap cell, or the point's index in `i`;
`x`, `y`: the cell's or point's coordinates as labelled; `z`: the cell's
value; `customdata` and `text`: what the hover shows, e.g. the overview
thumbnails keep the raw weights in `customdata` and the weight over the
head's max in `z`). JSON keeps the structure: the panel's title and its traces
with their arrays and axis titles. A table exports its rows: (`name`, `value`) for a
two-column table, the header's columns for a wide one (`components.table_panel`).
Labels lose plotly's markup (`<br>`, entities); a text cell that a spreadsheet
would run as a formula (starting with = + - @) is prefixed with an apostrophe
in the CSV only. NaN (a heatmap's gaps) is an empty CSV cell and null in JSON.
"""

from __future__ import annotations

from dash import html

#: Formats offered under each panel.
FORMATS = ("csv", "json")


def export_controls(name: str, kind: str = "graph") -> html.Div:
    """The buttons under one panel: `name` names the file (`<page>-<name>.csv`),
    `kind` says what to read (`graph`: the plotly figure in the same
    `.hs-panel`; `table`: the table in it)."""
    buttons = [
        html.Button(
            fmt.upper(),
            className="hs-export-button",
            title=f"Download this {'table' if kind == 'table' else 'panel'}'s data as "
            + ("CSV (one row per cell or point)" if fmt == "csv" else "JSON"),
            n_clicks=0,
            **{"data-format": fmt, "data-name": name, "data-kind": kind},
        )
        for fmt in FORMATS
    ]
    return html.Div(
        [html.Span("data", className="hs-export-label"), *buttons], className="hs-export"
    )


EXPORT_SCRIPT = r"""
window.headscopeExport = (function() {
  const COLUMNS = ["panel", "trace", "name", "type", "i", "j", "x", "y", "z", "customdata",
                   "text", "x_title", "y_title", "z_title"];
  const TYPED = {f8: Float64Array, f4: Float32Array, i4: Int32Array, u4: Uint32Array,
                 i2: Int16Array, u2: Uint16Array, i1: Int8Array, u1: Uint8Array,
                 u1c: Uint8ClampedArray};
  function plain(value) {
    if (value === null || value === undefined) { return ""; }
    return String(value).replace(/<br\s*\/?>/gi, " ").replace(/<[^>]*>/g, "")
      .replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"')
      .replace(/&#39;/g, "'").replace(/&amp;/g, "&");
  }
  // A plotly array: a list, a typed array, or a {dtype, bdata, shape} spec.
  function decode(value) {
    if (value && typeof value === "object" && typeof value.bdata === "string" && value.dtype) {
      const bytes = Uint8Array.from(atob(value.bdata), c => c.charCodeAt(0));
      const flat = Array.from(new (TYPED[value.dtype] || Float64Array)(bytes.buffer));
      let shape = value.shape;
      if (typeof shape === "string") { shape = shape.split(",").map(Number); }
      if (shape && shape.length === 2) {
        const rows = [];
        for (let r = 0; r < shape[0]; r++) {
          rows.push(flat.slice(r * shape[1], (r + 1) * shape[1]));
        }
        return rows;
      }
      return flat;
    }
    if (ArrayBuffer.isView(value)) { return Array.from(value); }
    if (Array.isArray(value)) {
      return value.map(v => ArrayBuffer.isView(v) || Array.isArray(v) || (v && v.bdata)
                            ? decode(v) : v);
    }
    return value;
  }
  function finite(value) {
    return typeof value === "number" && !Number.isFinite(value) ? null : value;
  }
  function clean(value) {
    if (Array.isArray(value)) { return value.map(clean); }
    if (typeof value === "string") { return plain(value); }
    return finite(value);
  }
  function axisTitle(layout, ref, letter) {
    const name = letter + "axis" + (ref && ref.length > 1 ? ref.slice(1) : "");
    const axis = layout && layout[name];
    return titleOf(axis);
  }
  function titleOf(thing) {
    const title = thing && thing.title;
    return plain(title && (typeof title === "object" ? title.text : title));
  }
  function traces(gd) {
    const data = gd.data || [];
    const full = gd._fullData || [];
    const layout = gd._fullLayout || gd.layout || {};
    return data.map(function(trace, index) {
      const fullTrace = full[index] || {};
      const bar = fullTrace.colorbar || trace.colorbar || (trace.marker && trace.marker.colorbar);
      const out = {name: plain(trace.name || ""), type: trace.type || "scatter",
                   x_title: axisTitle(layout, trace.xaxis, "x"),
                   y_title: axisTitle(layout, trace.yaxis, "y"),
                   z_title: titleOf(bar)};
      for (const key of ["x", "y", "z", "customdata", "text", "hovertext"]) {
        if (trace[key] !== undefined && trace[key] !== null) {
          out[key] = clean(decode(trace[key]));
        }
      }
      return out;
    });
  }
  function at(values, i, j) {
    if (values === undefined || values === null) { return ""; }
    if (!Array.isArray(values)) { return values; }
    const row = values[i];
    if (j === undefined) { return row === undefined ? "" : row; }
    return Array.isArray(row) ? (row[j] === undefined ? "" : row[j]) : row;
  }
  function rows(panel, list) {
    const out = [];
    list.forEach(function(trace, t) {
      const base = {panel: panel, trace: t, name: trace.name, type: trace.type,
                    x_title: trace.x_title, y_title: trace.y_title, z_title: trace.z_title};
      const text = trace.text !== undefined ? trace.text : trace.hovertext;
      if (Array.isArray(trace.z) && Array.isArray(trace.z[0])) {
        trace.z.forEach(function(line, i) {
          line.forEach(function(z, j) {
            out.push(Object.assign({}, base, {
              i: i, j: j, x: Array.isArray(trace.x) ? at(trace.x, j) : j,
              y: Array.isArray(trace.y) ? at(trace.y, i) : i, z: z,
              customdata: at(trace.customdata, i, j), text: at(text, i, j)}));
          });
        });
        return;
      }
      const n = Math.max(...["x", "y", "z"].map(
        k => Array.isArray(trace[k]) ? trace[k].length : 0));
      for (let i = 0; i < n; i++) {
        out.push(Object.assign({}, base, {
          i: i, j: "", x: at(trace.x, i), y: at(trace.y, i), z: at(trace.z, i),
          customdata: at(trace.customdata, i), text: at(text, i)}));
      }
    });
    return out;
  }
  function cell(value) {
    if (value === null || value === undefined) { return ""; }
    if (Array.isArray(value)) { value = JSON.stringify(value); }
    if (typeof value === "number") { return Number.isFinite(value) ? String(value) : ""; }
    let text = String(value);
    if (/^[=+\-@\t\r]/.test(text)) { text = "'" + text; }
    const quote = /[",\n\r]/.test(text) || /^\s|\s$/.test(text);
    return quote ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function csv(columns, records) {
    const lines = records.map(r => columns.map(c => cell(r[c])).join(","));
    return [columns.map(cell).join(",")].concat(lines).join("\r\n") + "\r\n";
  }
  function graphText(gd, panel, format) {
    const list = traces(gd);
    if (format === "json") {
      const layout = gd._fullLayout || gd.layout || {};
      const title = titleOf(layout);
      return JSON.stringify({panel: panel, page: window.location.pathname, title: title,
                             traces: list}, null, 1);
    }
    return csv(COLUMNS, rows(panel, list));
  }
  function cellTexts(tr) {
    return Array.from(tr.querySelectorAll("td, th")).map(td => td.innerText.trim());
  }
  function tableText(table, panel, format) {
    const header = table.querySelector("thead tr");
    let columns = ["name", "value"];
    let records;
    if (header) {  // a wide table: its header names the columns, one record per body row
      columns = cellTexts(header).map((title, k) => title || "column " + (k + 1));
      records = Array.from(table.querySelectorAll("tbody tr")).map(function(tr) {
        const cells = cellTexts(tr);
        const record = {};
        columns.forEach(function(column, k) {
          record[column] = cells[k] === undefined ? "" : cells[k];
        });
        return record;
      });
    } else {  // a two-column (what, value) table
      records = Array.from(table.querySelectorAll("tr")).map(function(tr) {
        const cells = cellTexts(tr);
        return {name: cells[0] || "", value: cells.slice(1).join(" ")};
      });
    }
    if (format === "json") {
      return JSON.stringify({panel: panel, page: window.location.pathname, columns: columns,
                             rows: records}, null, 1);
    }
    return csv(columns, records);
  }
  function text(button) {
    const panel = button.closest(".hs-panel");
    const name = button.dataset.name || "panel";
    const format = button.dataset.format === "json" ? "json" : "csv";
    if (!panel) { return null; }
    if (button.dataset.kind === "table") {
      const table = panel.querySelector("table");
      return table ? tableText(table, name, format) : null;
    }
    const gd = panel.querySelector(".js-plotly-plot");
    return gd ? graphText(gd, name, format) : null;
  }
  function filename(button) {
    const page = (window.location.pathname.replace(/^\/+|\/+$/g, "") || "overview")
      .replace(/[^A-Za-z0-9_-]+/g, "-");
    let name = button.dataset.name || "panel";
    const card = button.closest(".hs-card");
    const heading = card && card.querySelector("h3");
    if (name === "table" && heading) { name = heading.innerText.trim().toLowerCase(); }
    name = name.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "") || "panel";
    return page + "-" + name + "." + (button.dataset.format === "json" ? "json" : "csv");
  }
  function download(button) {
    const body = text(button);
    if (body === null) { return; }
    const type = button.dataset.format === "json" ? "application/json" : "text/csv";
    const url = URL.createObjectURL(new Blob([body], {type: type + ";charset=utf-8"}));
    const link = document.createElement("a");
    link.href = url;
    link.download = filename(button);
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  document.addEventListener("click", function(event) {
    const button = event.target.closest && event.target.closest(".hs-export-button");
    if (button) { event.preventDefault(); download(button); }
  });
  return {text: text, graphText: graphText, tableText: tableText, filename: filename};
})();
"""
