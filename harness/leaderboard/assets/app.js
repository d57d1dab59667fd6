"use strict";
// The leaderboard page: a sortable, filterable table, figure switching and the per-token viewer.
// Model text is untrusted: every string reaches the page through textContent, createTextNode or
// setAttribute on attributes this script names; nothing is ever parsed as markup.
(() => {
  const DATA = JSON.parse(document.getElementById("odiag-data").textContent);
  const BOARD = DATA.board;
  const byId = (id) => document.getElementById(id);
  const DIVERGENCE_NAMES = {kl: "KL(π_T‖π)", reverse_kl: "KL(π‖π_T)", js: "JS", tv: "TV", prob_cosine: "cos(π, π_T)"};

  function h(tag, props, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "style") Object.assign(node.style, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const kid of kids.flat()) {
      if (kid !== null && kid !== undefined && kid !== false) node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }

  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const signed = (x, d = 3) => (isNum(x) ? (x < 0 ? "\u2212" : "+") + Math.abs(x).toFixed(d) : "\u2013");
  const plain = (x, d = 3) => (isNum(x) ? x.toFixed(d) : "\u2013");
  const pval = (p) => (!isNum(p) ? "\u2013" : p < 0.001 ? p.toExponential(1) : p.toFixed(3));
  const count = (n) => (isNum(n) ? n.toLocaleString("en-US") : "\u2013");
  const mean = (s) => (s && isNum(s.mean) ? s.mean : null);
  const interval = (s, key = "ci95") =>
    s && s[key] && isNum(s[key][0]) && isNum(s[key][1]) ? `[${signed(s[key][0])}, ${signed(s[key][1])}]` : "";
  const divName = (d) => DIVERGENCE_NAMES[d] || d;

  function option(value, text, selected) {
    const o = h("option", {value: String(value)}, text);
    o.selected = Boolean(selected);
    return o;
  }

  // ---------------------------------------------------------------- leaderboard table
  const state = {group: 0, algorithm: "", teacher: "", divergence: DATA.divergences.includes("reverse_kl") ? "reverse_kl" : DATA.divergences[0],
                 sortKey: "alignment", sortDir: -1};
  const group = () => BOARD.groups[state.group];
  const groupEntries = () => BOARD.entries.filter((e) => e.task === group().task && e.student === group().student);
  const correlation = (e) => (((e.divergence_correlations || {})[state.divergence] || {}).spearman) || null;

  function ciBar(s) {
    const pos = (x) => `${((Math.max(-1, Math.min(1, x)) + 1) / 2) * 100}%`;
    const bar = h("span", {className: "cibar", "aria-hidden": "true"}, h("span", {className: "zero"}));
    if (s && isNum(s.ci95 && s.ci95[0]) && isNum(s.ci95[1])) {
      const lo = Math.max(-1, s.ci95[0]), hi = Math.min(1, s.ci95[1]);
      bar.append(h("span", {className: "span", style: {left: pos(lo), width: `${((hi - lo) / 2) * 100}%`}}));
    }
    if (s && isNum(s.mean)) bar.append(h("span", {className: "mean", style: {left: pos(s.mean)}}));
    return bar;
  }

  function statCell(s, withBar) {
    if (!s) return h("td", {className: "num"}, "\u2013");
    const tip = `mean ${signed(s.mean, 4)}; 95% t CI ${interval(s)}; bootstrap ${interval(s, "ci95_bootstrap")}; ` +
      [isNum(s.n_questions) ? `${count(s.n_questions)} questions` : null, isNum(s.n_paths) ? `${count(s.n_paths)} paths` : null]
        .filter((x) => x).join(", ");
    return h("td", {className: "num", title: tip}, withBar ? ciBar(s) : null, h("span", {className: "mean-text"}, signed(s.mean)),
             h("span", {className: "ci"}, interval(s)));
  }

  const COLUMNS = [
    {key: "rank", label: "Rank", title: "rank among this algorithm's teachers by mean alignment; \u2248: 95% CIs overlap", dir: 1,
     value: (e) => e.rank,
     cell: (e) => h("td", {className: "num rank"}, e.rank === null ? "\u2013" : `#${e.rank}`,
       e.tied_with.length ? h("span", {className: "tie", title: `95% CI overlaps: ${e.tied_with.join(", ")}`}, " \u2248") : null)},
    {key: "teacher", label: "Teacher", dir: 1, value: (e) => e.label,
     cell: (e) => h("td", {title: e.description || null}, h("span", {className: "swatch", style: {background: DATA.colours[e.label] || "#999"}}), e.label)},
    {key: "algorithm", label: "Algorithm", dir: 1, value: (e) => e.algorithm, cell: (e) => h("td", {}, e.algorithm)},
    {key: "alignment", label: "Alignment", title: "mean alignment over questions (95% t CI)", value: (e) => mean(e.alignment),
     cell: (e) => statCell(e.alignment, true)},
    {key: "weighted", label: "Weighted", title: "alignment weighted by |g*|, what is at stake at each node", value: (e) => mean(e.weighted_alignment),
     cell: (e) => statCell(e.weighted_alignment, false)},
    {key: "gap", label: "Incorrect \u2212 correct", title: "alignment on incorrect minus correct paths, paired over questions",
     value: (e) => mean(e.incorrect_minus_correct),
     cell: (e) => {
       const d = e.incorrect_minus_correct;
       if (!d) return h("td", {className: "num"}, "\u2013");
       const pooled = d.pooled ? ` (its estimate: ${signed(d.pooled.mean)} ${interval(d.pooled)}, pooled over every path)` : "";
       return h("td", {className: "num", title: `95% t CI ${interval(d)}; p paired ${pval(d.p_paired)}, question-clustered ${pval(d.p_clustered)}${pooled}`},
                h("span", {className: "mean-text"}, signed(d.mean)), h("span", {className: "ci"}, `p=${pval(d.p_paired)}`));
     }},
    {key: "advantage", label: "Teacher advantage", title: "\u03a3 (\u03c0\u0303_T \u2212 \u03c0\u0303) Q over A(s): positive when the teacher knows better",
     value: (e) => mean(e.teacher_advantage), cell: (e) => statCell(e.teacher_advantage, false)},
    {key: "correlation", label: () => `\u03c1(${divName(state.divergence)}, alignment)`, title: "within-path Spearman correlation, averaged per question, then over questions",
     value: (e) => mean(correlation(e)), cell: (e) => statCell(correlation(e), false)},
    {key: "decision_points", label: "Decision points", value: (e) => e.n_decision_points,
     cell: (e) => h("td", {className: "num", title: `${count(e.n_undefined)} with an undefined score`}, count(e.n_decision_points))},
    {key: "rollouts", label: "Rollouts", title: "the run's rollouts (shared by all its teachers); tokens generated in the tooltip",
     value: (e) => e.rollouts, cell: (e) => h("td", {className: "num", title: `${count(e.tokens_generated)} tokens generated`}, count(e.rollouts))},
    {key: "run", label: "Run", dir: 1, value: (e) => e.run, cell: (e) => h("td", {}, e.run), only: () => group().runs.length > 1},
  ];

  function compare(col) {
    return (a, b) => {
      const x = col.value(a), y = col.value(b);
      const missingX = x === null || x === undefined, missingY = y === null || y === undefined;
      if (missingX || missingY) return missingX - missingY; // missing values last, whatever the direction
      const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
      return c * state.sortDir || a.key.localeCompare(b.key);
    };
  }

  function renderTable() {
    const columns = COLUMNS.filter((c) => !c.only || c.only());
    const table = byId("board");
    const headRow = h("tr");
    for (const col of columns) {
      const active = col.key === state.sortKey;
      const label = typeof col.label === "function" ? col.label() : col.label;
      const button = h("button", {type: "button", "data-key": col.key, title: col.title || null,
        onclick: () => {
          if (state.sortKey === col.key) state.sortDir = -state.sortDir;
          else { state.sortKey = col.key; state.sortDir = col.dir || -1; }
          renderTable();
        }}, label, h("span", {className: "arrow", "aria-hidden": "true"}, active ? (state.sortDir > 0 ? " \u25b2" : " \u25bc") : ""));
      headRow.append(h("th", {scope: "col", "aria-sort": active ? (state.sortDir > 0 ? "ascending" : "descending") : "none"}, button));
    }
    table.tHead.replaceChildren(headRow);
    const needle = state.teacher.trim().toLowerCase();
    const rows = groupEntries()
      .filter((e) => !state.algorithm || e.algorithm === state.algorithm)
      .filter((e) => !needle || e.label.toLowerCase().includes(needle))
      .sort(compare(columns.find((c) => c.key === state.sortKey) || columns[0]));
    table.tBodies[0].replaceChildren(...rows.map((e) => h("tr", {"data-key": e.key}, ...columns.map((c) => c.cell(e)))));
    byId("board-caption").replaceChildren(`${group().task} \u00b7 student ${group().student} \u00b7 ${rows.length} of ${groupEntries().length} teacher \u00d7 algorithm entries`);
  }

  function renderHeadline() {
    const g = group();
    const scored = groupEntries().filter((e) => e.algorithm === g.headline_algorithm && isNum(mean(e.alignment)));
    scored.sort((a, b) => mean(b.alignment) - mean(a.alignment));
    const runs = BOARD.runs.filter((r) => g.runs.includes(r.id));
    const sum = (k) => runs.reduce((acc, r) => acc + (r.counts[k] || 0), 0);
    const card = (title, e, note) => h("div", {className: "card"}, h("div", {className: "card-title"}, title),
      e ? [h("div", {className: "card-main"}, h("span", {className: "swatch", style: {background: DATA.colours[e.label] || "#999"}}), e.label),
           h("div", {}, `alignment ${signed(mean(e.alignment))} ${interval(e.alignment)}`), h("div", {className: "muted"}, note(e))]
        : h("div", {className: "muted"}, "no scored teacher"));
    const hasCI = (e) => Boolean(e && e.alignment && e.alignment.ci95 && e.alignment.ci95.every(isNum));
    const byKey = new Map(BOARD.entries.map((x) => [x.key, x]));
    const tiedNote = (e) => {
      if (!e.tied_with.length) return "no CI overlap with another teacher";
      const why = !hasCI(e) ? "it has no 95% CI (one question, or no spread)"
        : e.tied_with.every((k) => hasCI(byKey.get(k))) ? "CIs overlap" : "CIs overlap, or the other has none";
      return `not resolved from ${e.tied_with.length} other(s): ${why}`;
    };
    byId("headline").replaceChildren(
      card(`Most aligned teacher \u00b7 ${g.headline_algorithm}`, scored[0], tiedNote),
      card(`Least aligned teacher \u00b7 ${g.headline_algorithm}`, scored.length > 1 ? scored[scored.length - 1] : null,
           (e) => `teacher advantage ${signed(mean(e.teacher_advantage))}`),
      h("div", {className: "card"}, h("div", {className: "card-title"}, `${g.task} \u00b7 student ${g.student}`),
        h("div", {className: "card-main"}, `${count(sum("questions"))} questions \u00b7 ${count(sum("decision_points"))} decision points`),
        h("div", {}, `${count(sum("rollouts"))} rollouts \u00b7 ${count(sum("tokens_generated"))} tokens`),
        h("div", {className: "muted"}, `${g.teachers.length} teachers \u00d7 ${g.algorithms.length} algorithms \u00b7 ` +
          (runs.length > 1 ? `${runs.length} runs (counts summed over runs)` : "1 run"))));
  }

  function renderFigures() {
    const g = group();
    for (const fig of document.querySelectorAll("figure.fig")) {
      const mine = fig.dataset.group ? fig.dataset.group === g.id : fig.dataset.task === g.task;
      fig.hidden = !mine;
    }
  }

  function setupTable() {
    const groupSelect = byId("group");
    groupSelect.replaceChildren(...BOARD.groups.map((g, i) => option(i, `${g.task} \u00b7 ${g.student}`, i === state.group)));
    const algorithmSelect = byId("algorithm");
    // opens on the headline algorithm (GKD where run): the Dr. GRPO reference ignores the teacher, so "all" leads with it
    const fillAlgorithms = () => {
      state.algorithm = group().algorithms.includes(group().headline_algorithm) ? group().headline_algorithm : "";
      algorithmSelect.replaceChildren(option("", "all", !state.algorithm),
                                      ...group().algorithms.map((a) => option(a, a, a === state.algorithm)));
    };
    fillAlgorithms();
    byId("divergence").replaceChildren(...DATA.divergences.map((d) => option(d, divName(d), d === state.divergence)));
    groupSelect.addEventListener("change", () => {
      state.group = Number(groupSelect.value);
      fillAlgorithms();
      renderAll();
      const run = viewerRuns().findIndex((r) => group().runs.includes(r.run));
      if (run >= 0) selectRun(run);
    });
    algorithmSelect.addEventListener("change", () => { state.algorithm = algorithmSelect.value; renderTable(); });
    byId("teacher-filter").addEventListener("input", (ev) => { state.teacher = ev.target.value; renderTable(); });
    byId("divergence").addEventListener("change", (ev) => { state.divergence = ev.target.value; renderTable(); });
  }

  // ---------------------------------------------------------------- per-token viewer
  const viewerRuns = () => DATA.viewer.filter((r) => r.paths.length); // a run may have no path in the budget
  const V = {run: 0, path: 0, teacher: 0, algorithm: 0, pinned: null};
  const vRun = () => viewerRuns()[V.run];
  const vPath = () => vRun().paths[V.path];

  function alignColour(a) {
    // RdBu: red where the distillation gradient points away from success, blue where toward it
    const s = Math.min(1, Math.abs(a));
    const end = a < 0 ? [178, 24, 43] : [33, 102, 172];
    const mid = [247, 247, 247];
    return `rgb(${mid.map((m, i) => Math.round(m + (end[i] - m) * s)).join(",")})`;
  }

  function pointAt(k) {
    return (vPath().points[String(k)] || []).find((p) => p.t === V.teacher) || null;
  }

  // Whitespace stays visible: a newline token shows a return mark before the line break.
  const shown = (text) => (text === "" ? "\u2205" : text.replace(/\n/g, "\u21b5\n"));

  function renderTokens() {
    const box = byId("tokens");
    const path = vPath();
    const spans = path.text.map((text, k) => {
      const p = pointAt(k);
      const a = p ? p.align[V.algorithm] : null;
      const span = h("span", {className: p ? (isNum(a) ? "token dp" : "token dp undefined") : "token plain", "data-pos": k,
                              tabindex: p ? 0 : null, role: p ? "button" : null}, shown(text));
      if (p && isNum(a)) {
        span.style.background = alignColour(a);
        if (Math.abs(a) > 0.55) span.style.color = "#fff";
      }
      if (V.pinned === k) span.classList.add("selected");
      return span;
    });
    box.replaceChildren(...spans);
    showDetail(V.pinned);
  }

  function kv(label, value, title) {
    return h("div", {className: "kv", title: title || null}, h("span", {className: "k"}, label), h("span", {className: "v"}, value));
  }

  function probBar(x, cls) {
    return h("span", {className: `pbar ${cls}`, style: {width: `${Math.round(Math.max(0, Math.min(1, x || 0)) * 60)}px`}});
  }

  function showDetail(k) {
    const box = byId("detail");
    const run = vRun(), path = vPath();
    if (k === null || k === undefined || k >= path.text.length) {
      box.replaceChildren(h("p", {className: "muted"}, `Question ${path.question}, path ${path.path} (${path.correct ? "correct" : "incorrect"}), ` +
        `${path.text.length} tokens, ${Object.keys(path.points).length} decision points. Hover over or select a token.`));
      return;
    }
    const p = pointAt(k);
    const head = h("div", {className: "detail-head"}, `position ${k} \u00b7 token `, h("code", {}, shown(path.text[k])),
                   h("span", {className: "muted"}, ` id ${path.tokens[k]}`));
    if (!p) {
      box.replaceChildren(head, h("p", {className: "muted"},
        "Not a decision point for this teacher: fewer than two children with enough visits, or every child has the same Q."));
      return;
    }
    const algorithms = run.algorithms.map((a, i) => h("span", {className: i === V.algorithm ? "chip active" : "chip",
      style: isNum(p.align[i]) ? {background: alignColour(p.align[i]), color: Math.abs(p.align[i]) > 0.55 ? "#fff" : "#111"} : {}}, `${a} ${signed(p.align[i])}`));
    const divs = run.divergences.map((d, i) => kv(divName(d), plain(p.div[i]), p.approx ? "top-k plus a tail bucket: approximate" : null));
    const rows = p.children.map(([token, text, n, w, q, pi, piT]) => {
      const onPath = token === path.tokens[k];
      return h("tr", {className: onPath ? "on-path" : null},
        h("td", {}, text === null ? h("span", {className: "muted"}, `#${token}`) : h("code", {}, shown(text)), onPath ? h("span", {className: "muted"}, " \u2190 path") : null),
        h("td", {className: "num"}, plain(q)), h("td", {className: "num"}, count(n)), h("td", {className: "num"}, count(w)),
        h("td", {className: "num"}, probBar(pi, "student"), plain(pi)), h("td", {className: "num"}, probBar(piT, "teacher"), plain(piT)));
    });
    box.replaceChildren(
      head,
      h("div", {className: "chips"}, algorithms),
      h("div", {className: "kvs"},
        kv("teacher advantage", signed(p.adv), "\u03a3 (\u03c0\u0303_T \u2212 \u03c0\u0303) Q over A(s)"), kv("V", plain(p.value), "\u03a3 \u03c0\u0303 Q: the node's success estimate"),
        kv("|A(s)|", String(p.n_actions)), kv("visits", count(p.visits)), kv("|g*|", plain(p.norm, 4), "norm of the ideal gradient: what is at stake"),
        ...divs),
      h("table", {className: "children"},
        h("thead", {}, h("tr", {}, h("th", {}, "child in A(s)"), h("th", {}, "Q"), h("th", {}, "n"), h("th", {}, "w"), h("th", {}, "\u03c0"), h("th", {}, "\u03c0_T"))),
        h("tbody", {}, rows)));
  }

  function fillViewerSelects() {
    const run = vRun();
    const questions = [...new Set(run.paths.map((p) => p.question))];
    const current = vPath();
    byId("v-question").replaceChildren(...questions.map((q) => option(q, q, q === current.question)));
    byId("v-path").replaceChildren(...run.paths.map((p, i) => [p, i]).filter(([p]) => p.question === current.question)
      .map(([p, i]) => option(i, `path ${p.path} \u00b7 ${p.correct ? "correct" : "incorrect"} \u00b7 ${p.text.length} tokens`, i === V.path)));
    byId("v-teacher").replaceChildren(...run.teachers.map((t, i) => option(i, t, i === V.teacher)));
    byId("v-algorithm").replaceChildren(...run.algorithms.map((a, i) => option(i, a, i === V.algorithm)));
  }

  function selectRun(i) {
    V.run = i;
    const run = vRun();
    // open on the path with the most decision points: the most to see
    let best = 0;
    run.paths.forEach((p, j) => { if (Object.keys(p.points).length > Object.keys(run.paths[best].points).length) best = j; });
    V.path = best;
    V.teacher = Math.min(V.teacher, run.teachers.length - 1);
    const headline = run.algorithms.indexOf(group().headline_algorithm);
    V.algorithm = headline >= 0 ? headline : 0;
    V.pinned = null;
    byId("v-run").value = String(i);
    fillViewerSelects();
    renderTokens();
  }

  function setupViewer() {
    const omitted = DATA.viewer.reduce((acc, r) => acc + (r.omitted || 0), 0);
    if (omitted) {
      document.querySelector("#viewer .legend").before(h("p", {className: "note", id: "viewer-omitted"},
        `${omitted} path(s) are not in this page (its size budget); the table and figures use every path.`));
    }
    if (!viewerRuns().length) {
      byId("tokens").append(h("p", {className: "muted"}, "No paths to show."));
      return;
    }
    byId("v-run").replaceChildren(...viewerRuns().map((r, i) => option(i, `${r.run} (${r.task} \u00b7 ${r.student})`, i === 0)));
    byId("v-run").addEventListener("change", (ev) => selectRun(Number(ev.target.value)));
    byId("v-question").addEventListener("change", (ev) => {
      V.path = vRun().paths.findIndex((p) => p.question === ev.target.value);
      V.pinned = null;
      fillViewerSelects();
      renderTokens();
    });
    const rerender = (key) => (ev) => { V[key] = Number(ev.target.value); fillViewerSelects(); renderTokens(); };
    byId("v-path").addEventListener("change", (ev) => { V.pinned = null; rerender("path")(ev); });
    byId("v-teacher").addEventListener("change", rerender("teacher"));
    byId("v-algorithm").addEventListener("change", rerender("algorithm"));
    const box = byId("tokens");
    const posOf = (ev) => {
      const span = ev.target.closest ? ev.target.closest("span.token") : null;
      return span && box.contains(span) ? Number(span.dataset.pos) : null;
    };
    box.addEventListener("mouseover", (ev) => { const k = posOf(ev); if (k !== null) showDetail(k); });
    box.addEventListener("mouseleave", () => showDetail(V.pinned));
    box.addEventListener("focusin", (ev) => { const k = posOf(ev); if (k !== null) showDetail(k); });
    const pin = (k) => { V.pinned = V.pinned === k ? null : k; renderTokens(); const again = box.querySelector(`[data-pos="${k}"]`); if (again && again.tabIndex === 0) again.focus(); };
    box.addEventListener("click", (ev) => { const k = posOf(ev); if (k !== null) pin(k); });
    box.addEventListener("keydown", (ev) => {
      const k = posOf(ev);
      if (k !== null && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); pin(k); }
    });
    selectRun(Math.max(0, viewerRuns().findIndex((r) => group().runs.includes(r.run))));
  }

  function renderAll() {
    renderHeadline();
    renderTable();
    renderFigures();
  }

  setupTable();
  renderAll();
  setupViewer();
})();
