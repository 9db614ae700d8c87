/* Explore page: loads the rows from assets/data/explore.json, filters them with the form, keeps the filter
   in the query string, sorts by column and downloads the BibTeX of the rows shown.
   The DOM is built with textContent and attributes only: no paper text is ever parsed as HTML. */
(function () {
  "use strict";

  // The text filter is "text", not "q": Material's search reads "q" and would open its overlay on a shared link.
  var BASE_FIELDS = ["text", "stage", "node", "venue", "from", "to", "code", "results"];
  var downloadCache = {};
  var PAGE_ROWS = 100;  // rows drawn at a time: the full table is 500+ rows, tens of thousands of px on a phone  // format -> the whole collection's file, fetched once

  function rowsOf(data) {
    var col = {};
    data.columns.forEach(function (name, index) { col[name] = index; });
    return data.rows.map(function (raw) {
      var nodes = raw[col.nodes].map(function (i) { return data.nodes[i][0]; });
      var facets = {};
      data.facets.forEach(function (facet, i) { facets[facet] = raw[col.facets][i]; });
      var primary = raw[col.nodes].length ? data.nodes[raw[col.nodes][0]] : ["", ""];
      return {
        id: raw[col.id], name: raw[col.name], title: raw[col.title], authors: raw[col.authors],
        year: raw[col.year], venue: raw[col.venue], nodes: nodes, facets: facets, code: raw[col.code] === 1,
        results: raw[col.results] === 1, key: raw[col.key], stage: primary[0].split("/")[0], node: primary[0], nodeName: primary[1],
        hay: (raw[col.name] + " " + raw[col.title] + " " + raw[col.authors] + " " + raw[col.venue]).toLowerCase()
      };
    });
  }

  function readForm(form, fields) {
    var values = {};
    fields.forEach(function (name) {
      var input = form.elements[name];
      if (!input) return;
      var value = input.type === "checkbox" ? (input.checked ? "1" : "") : input.value.trim();
      if (value) values[name] = value;
    });
    return values;
  }

  function writeForm(form, fields, values) {
    fields.forEach(function (name) {
      var input = form.elements[name];
      if (!input) return;
      if (input.type === "checkbox") input.checked = values[name] === "1";
      else input.value = values[name] || "";
    });
  }

  function matches(row, filter, facetNames) {
    if (filter.stage && !row.nodes.some(function (p) {  // any placement, not only the primary one
      return p === filter.stage || p.indexOf(filter.stage + "/") === 0;
    })) return false;
    if (filter.node && !row.nodes.some(function (p) {
      return p === filter.node || p.indexOf(filter.node + "/") === 0;
    })) return false;
    if (filter.venue && row.venue !== filter.venue) return false;
    if (filter.from && row.year < Number(filter.from)) return false;
    if (filter.to && row.year > Number(filter.to)) return false;
    if (filter.code && !row.code) return false;
    if (filter.results && !row.results) return false;
    for (var i = 0; i < facetNames.length; i++) {
      var want = filter[facetNames[i]];
      if (want && row.facets[facetNames[i]] !== want) return false;
    }
    if (filter.text) {
      var terms = filter.text.toLowerCase().split(/\s+/);
      for (var t = 0; t < terms.length; t++) if (row.hay.indexOf(terms[t]) < 0) return false;
    }
    return true;
  }

  var SORTS = {
    title: function (r) { return (r.name || r.title).toLowerCase(); },
    year: function (r) { return r.year; },
    venue: function (r) { return r.venue.toLowerCase(); },
    node: function (r) { return r.node; },
    code: function (r) { return r.code ? 1 : 0; }
  };

  function sortRows(rows, sort, order) {
    var key = SORTS[sort] || SORTS.year;
    var sign = order === "asc" ? 1 : -1;
    return rows.slice().sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x < y) return -sign;
      if (x > y) return sign;
      return a.id < b.id ? -1 : 1;
    });
  }

  function cell(tr, child) {
    var td = document.createElement("td");
    if (typeof child === "string") td.textContent = child; else td.appendChild(child);
    tr.appendChild(td);
    return td;
  }

  // Summaries are a separate file, fetched once, the first time a reader unfolds one.
  var summaries = null;

  function showSummary(event) {
    var details = event.target;
    if (!details.open || details.dataset.filled) return;
    var root = document.getElementById("lvlm-explore");
    summaries = summaries || fetch(root.dataset.summaries).then(function (response) {
      if (!response.ok) throw new Error("summaries.json answered " + response.status);
      return response.json();
    });
    summaries.then(function (byId) {
      details.dataset.filled = "yes";
      details.appendChild(document.createTextNode(byId[details.dataset.id] || ""));
    }).catch(function (error) {
      summaries = null;
      details.appendChild(document.createTextNode("Could not load the summary: " + error.message));
    });
  }

  function renderRows(body, rows, papersBase) {
    var fragment = document.createDocumentFragment();
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      var link = document.createElement("a");
      link.setAttribute("href", papersBase + encodeURIComponent(row.id) + "/");
      var title = row.title;
      if (row.name) {
        var strong = document.createElement("strong");
        strong.textContent = row.name;
        link.appendChild(strong);
        if (title.indexOf(row.name) === 0) title = title.slice(row.name.length);
        else link.appendChild(document.createTextNode(": "));
      }
      link.appendChild(document.createTextNode(title));
      var work = cell(tr, link);
      var authors = document.createElement("div");
      authors.className = "lvlm-muted lvlm-explore__authors";
      authors.textContent = row.authors;
      work.appendChild(authors);
      var details = document.createElement("details");  // folded: a screen of rows stays a screen of rows
      details.className = "lvlm-explore__summary";
      details.dataset.id = row.id;
      var label = document.createElement("summary");
      label.textContent = "Summary";
      details.appendChild(label);
      details.addEventListener("toggle", showSummary);
      work.appendChild(details);
      cell(tr, String(row.year));
      cell(tr, row.venue);
      cell(tr, row.nodeName);
      cell(tr, row.code ? "yes" : "–");
      fragment.appendChild(tr);
    });
    body.replaceChildren(fragment);
    if (!rows.length) {
      var empty = document.createElement("tr");
      cell(empty, "No paper matches this filter.").colSpan = 5;
      body.appendChild(empty);
    }
  }

  function bibtexEntries(text) {
    var byKey = {};
    text.split(/\n(?=@)/).forEach(function (chunk) {
      var match = /^@\w+\s*\{\s*([^,\s]+)\s*,/.exec(chunk.trim());
      if (match) byKey[match[1]] = chunk.trim();
    });
    return byKey;
  }

  function risEntries(text) {
    var byKey = {};
    text.split(/\n(?=TY {2}- )/).forEach(function (chunk) {
      var match = /^ID {2}- (\S+)$/m.exec(chunk);
      if (match) byKey[match[1]] = chunk.trim();
    });
    return byKey;
  }

  // Each download format: the site file it comes from, how to split it by citation key, how to join a pick.
  var FORMATS = {
    bibtex: { data: "bibtex", file: "efficient-lvlm-papers.bib", type: "application/x-bibtex",
      split: bibtexEntries,
      join: function (picked, href) {
        return "% " + picked.length + " BibTeX entries exported from the explore page: " + href + "\n\n" +
          picked.join("\n\n") + "\n";
      } },
    csl: { data: "csl", file: "efficient-lvlm-papers.json", type: "application/vnd.citationstyles.csl+json",
      split: function (text) {
        var byKey = {};
        JSON.parse(text).forEach(function (item) { byKey[item.id] = item; });
        return byKey;
      },
      join: function (picked) { return JSON.stringify(picked, null, 1) + "\n"; } },
    ris: { data: "ris", file: "efficient-lvlm-papers.ris", type: "application/x-research-info-systems",
      split: risEntries,
      join: function (picked) { return picked.join("\n\n") + "\n"; } }
  };

  function download(name, text, type) {
    var blob = new Blob([text], { type: type + ";charset=utf-8" });
    var url = URL.createObjectURL(blob);
    var a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
  }

  function setup(root, data) {
    var form = root.querySelector("form");
    var body = root.querySelector("#lvlm-rows");
    var count = root.querySelector("#lvlm-count");
    var facetNames = data.facets;
    var fields = BASE_FIELDS.concat(facetNames);
    var rows = rowsOf(data);
    var params = new URLSearchParams(window.location.search);
    var initial = {};
    fields.forEach(function (name) { if (params.get(name)) initial[name] = params.get(name); });
    var sort = params.get("sort") || "year";
    var order = params.get("order") || (sort === "year" ? "desc" : "asc");
    var shown = [];
    var limit = PAGE_ROWS;
    var more = root.querySelector("#lvlm-more");
    writeForm(form, fields, initial);

    function draw() {
      renderRows(body, shown.slice(0, limit), root.dataset.papers);
      more.hidden = shown.length <= limit;
      more.textContent = "Show " + Math.min(PAGE_ROWS, shown.length - limit) + " more of " +
        (shown.length - limit) + " not shown";
    }

    function update(pushUrl) {
      var filter = readForm(form, fields);
      shown = sortRows(rows.filter(function (row) { return matches(row, filter, facetNames); }), sort, order);
      limit = PAGE_ROWS;
      draw();
      count.textContent = String(shown.length);
      var active = Object.keys(filter).length;
      root.querySelector("#lvlm-filter-count").textContent = active ? " (" + active + " set)" : "";
      root.querySelectorAll("th button[data-sort]").forEach(function (button) {
        if (button.dataset.sort === sort) button.setAttribute("aria-sort", order === "asc" ? "ascending" : "descending");
        else button.removeAttribute("aria-sort");
      });
      if (pushUrl) {
        var query = new URLSearchParams(filter);
        if (sort !== "year" || order !== "desc") { query.set("sort", sort); query.set("order", order); }
        var search = query.toString();
        window.history.replaceState(window.history.state, "",
          window.location.pathname + (search ? "?" + search : "") + window.location.hash);
      }
    }

    more.addEventListener("click", function () { limit += PAGE_ROWS; draw(); });
    if (window.matchMedia("(max-width: 44.9375em)").matches) root.querySelector(".lvlm-filters-box").open = false;
    form.addEventListener("submit", function (event) { event.preventDefault(); });
    form.addEventListener("input", function () { update(true); });
    form.addEventListener("change", function () { update(true); });
    root.querySelectorAll("th button[data-sort]").forEach(function (button) {
      button.addEventListener("click", function () {
        var next = button.dataset.sort;
        order = next === sort ? (order === "asc" ? "desc" : "asc") : (next === "year" ? "desc" : "asc");
        sort = next;
        update(true);
      });
    });
    root.querySelector("#lvlm-reset").addEventListener("click", function () {
      writeForm(form, fields, {});
      update(true);
    });
    root.querySelector("#lvlm-download").addEventListener("click", function () {
      var format = FORMATS[root.querySelector("#lvlm-download-format").value] || FORMATS.bibtex;
      var source = downloadCache[format.data] ? Promise.resolve(downloadCache[format.data]) :
        fetch(root.dataset[format.data]).then(function (r) {
          if (!r.ok) throw new Error(format.data + " file answered " + r.status);
          return r.text();
        });
      source.then(function (text) {
        downloadCache[format.data] = text;
        var entries = format.split(text);
        var picked = shown.map(function (row) { return entries[row.key]; }).filter(Boolean);
        download(format.file, format.join(picked, window.location.href), format.type);
      }).catch(function (error) { count.parentNode.title = "Download failed: " + error.message; });
    });
    update(false);
    root.dataset.ready = "done";
  }

  function init() {
    var root = document.getElementById("lvlm-explore");
    if (!root || root.dataset.ready) return;
    root.dataset.ready = "loading";
    fetch(root.dataset.source)
      .then(function (response) {
        if (!response.ok) throw new Error("explore.json answered " + response.status);
        return response.json();
      })
      .then(function (data) { setup(root, data); })
      .catch(function (error) {
        root.querySelector("#lvlm-rows").textContent = "The paper list could not be loaded: " + error.message;
      });
  }

  if (typeof window.document$ !== "undefined") window.document$.subscribe(init);
  else document.addEventListener("DOMContentLoaded", init);
})();
