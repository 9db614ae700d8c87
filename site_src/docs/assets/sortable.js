/* Tables with class "lvlm-sortable" sort by a column when its header is clicked (again: the other way).
   A cell's data-value, when present, is the number it sorts by; columns marked data-sort-type="number" put
   cells without a number last. Rows are moved, never rebuilt, so links and titles stay as generated. */
(function () {
  "use strict";

  function key(cell, numeric) {
    if (!cell) return numeric ? null : "";
    if (numeric) {
      var value = cell.getAttribute("data-value");
      return value === null || value === "" ? null : Number(value);
    }
    return cell.textContent.trim().toLowerCase();
  }

  function sortBy(table, index, button) {
    var header = button.parentNode;
    var numeric = header.getAttribute("data-sort-type") === "number";
    var current = header.getAttribute("aria-sort");
    var ascending = current ? current === "descending" : !numeric;  // first click: numbers highest first, text A-Z
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index], numeric), y = key(b.cells[index], numeric);
      if (x === null || y === null) return (x === null) - (y === null);  // missing values last either way
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  function init() {
    document.querySelectorAll("table.lvlm-sortable").forEach(function (table) {
      if (table.dataset.sortReady) return;
      table.dataset.sortReady = "1";
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "lvlm-sort";
        while (th.firstChild) button.appendChild(th.firstChild);
        th.appendChild(button);
        button.addEventListener("click", function () { sortBy(table, index, button); });
      });
    });
  }

  if (typeof window.document$ !== "undefined") window.document$.subscribe(init);
  else document.addEventListener("DOMContentLoaded", init);
})();
