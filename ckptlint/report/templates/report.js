(function () {
  "use strict";
  var table = document.getElementById("findings");
  var body = table.tBodies[0];
  var severity = document.getElementById("filter-severity");
  var rule = document.getElementById("filter-rule");
  var shown = document.getElementById("shown");
  var rows = Array.prototype.slice.call(body.rows).filter(function (r) { return r.dataset.rule; });
  var rank = { error: 0, warning: 1, info: 2 };

  function filter() {
    var visible = 0;
    rows.forEach(function (row) {
      var keep = (!severity.value || row.dataset.severity === severity.value) &&
                 (!rule.value || row.dataset.rule === rule.value);
      row.hidden = !keep;
      if (keep) { visible += 1; }
    });
    shown.textContent = visible + " of " + rows.length + " shown";
  }

  function cellText(row, column) {
    return row.cells[column].textContent.trim();
  }

  Array.prototype.forEach.call(table.querySelectorAll("th[data-sort]"), function (header) {
    var ascending = true;
    header.addEventListener("click", function () {
      var column = Number(header.dataset.sort);
      rows.sort(function (a, b) {
        var x = cellText(a, column), y = cellText(b, column);
        if (column === 0) { x = rank[a.dataset.severity]; y = rank[b.dataset.severity]; }
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      ascending = !ascending;
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  severity.addEventListener("change", filter);
  rule.addEventListener("change", filter);
  filter();
}());
