"""The view's pages as Jinja templates, autoescaped, held in this module (a
`DictLoader`: no template, and no other file, is looked up from a URL). The report's
figures come in as `report.figures` objects and their words from `report.words`, the
same the Markdown and the HTML report render; the run page's report section is the
HTML report's own (`report.html.report_body`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape
from markupsafe import Markup

from ..report import words as w
from ..report.html import CSS

VIEW_CSS = """
nav{font-size:13px;margin-bottom:10px} nav a{margin-right:12px}
.banner{background:#fff8c5;border:1px solid #d4a72c;padding:10px 14px;border-radius:6px;margin:12px 0}
.pager{margin:10px 0;font-size:13px} .pager a,.pager span{margin-right:10px}
.tabs a{margin-right:10px;font-size:13px} .tabs a.on{font-weight:700;text-decoration:none;color:#1f2328}
details{margin:4px 0} summary{cursor:pointer;color:#0969da;font-size:12px}
"""

BASE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
{% block head %}{% endblock %}<title>{% block title %}abharness{% endblock %}</title>
<style>{{ css }}</style></head><body><main>
<nav><a href="/">runs</a>{% block nav %}{% endblock %}</nav>
{% block body %}{% endblock %}
</main></body></html>"""

PROBLEM = """{% extends "base.html" %}
{% block head %}{% if status == 503 %}<meta http-equiv="refresh" content="{{ retry }}">{% endif %}{% endblock %}
{% block title %}{{ title }} — abharness{% endblock %}
{% block body %}<div class="banner" role="alert"><b>{{ title }}</b>: {{ message }}</div>
{% if status == 503 %}<p class="note">This page reloads itself; nothing is written.</p>{% endif %}
{% endblock %}"""

PAGER = """{% macro pager(data, url) -%}
<div class="pager">{% if data.page > 1 %}<a href="{{ url(page=data.page - 1) }}" rel="prev">← previous</a>{% endif %}
<span>page {{ data.page }} of {{ data.pages }} · {{ "{:,}".format(data.total) }} rows</span>
{% if data.page < data.pages %}<a href="{{ url(page=data.page + 1) }}" rel="next">next →</a>{% endif %}</div>
{%- endmacro %}
{% macro rate(k, n) -%}{% if n %}{{ k }}/{{ n }}{% else %}–{% endif %}{%- endmacro %}
{% macro num(v, spec) -%}{{ fmt(v, spec) }}{%- endmacro %}
{% macro case_rows(rows, a, b, same_run) -%}
<div class="wide"><table class="cases"><tr><th>case</th><th class="l">variables</th>
<th>a passes</th><th>a score</th><th>b passes</th><th>b score</th><th>b − a</th>
<th>a p50 ms</th><th>b p50 ms</th><th>a cost</th><th>b cost</th></tr>
{% for r in rows %}<tr class="{{ 'regression' if (r.b_rate is not none and r.a_rate is not none and r.b_rate < r.a_rate) else '' }}">
<td class="l">{% if same_run %}<a href="/runs/{{ a.run_id | urlencode }}/cases/{{ r.case_id | urlencode }}?arms={{ (a.arm_id ~ ',' ~ b.arm_id) | urlencode }}">{{ r.case_id }}</a>{% else %}{{ r.case_id }}
 <a href="/runs/{{ a.run_id | urlencode }}/cases/{{ r.case_id | urlencode }}?arms={{ a.arm_id | urlencode }}">a</a>
 <a href="/runs/{{ b.run_id | urlencode }}/cases/{{ r.case_id | urlencode }}?arms={{ b.arm_id | urlencode }}">b</a>{% endif %}</td>
<td class="vars">{% for k, v in r.vars.items() %}<b>{{ k }}</b>={{ v | string | truncate(120) }}{% if not loop.last %}; {% endif %}{% endfor %}</td>
<td>{{ rate(r.a_k, r.a_n) }}{% if r.a_errors %}<div class="ci">{{ r.a_errors }} errors</div>{% endif %}</td><td>{{ num(r.a_score, '.3f') }}</td>
<td>{{ rate(r.b_k, r.b_n) }}{% if r.b_errors %}<div class="ci">{{ r.b_errors }} errors</div>{% endif %}</td><td>{{ num(r.b_score, '.3f') }}</td>
<td class="{{ 'worse' if r.diff is not none and r.diff < 0 else ('better' if r.diff is not none and r.diff > 0 else '') }}">{{ num(r.diff, '+.3f') }}</td>
<td>{{ num(r.a_latency_ms, '.0f') }}</td><td>{{ num(r.b_latency_ms, '.0f') }}</td>
<td>{{ num(r.a_cost_usd, '.5f') }}</td><td>{{ num(r.b_cost_usd, '.5f') }}</td></tr>
{% else %}<tr><td colspan="11" class="l">no case matches</td></tr>{% endfor %}
</table></div>
{%- endmacro %}"""

RUNS = """{% extends "base.html" %}{% from "macros.html" import pager %}
{% block title %}runs — abharness{% endblock %}
{% block body %}<h1>Runs</h1>
<form class="filters" method="get" action="/">
<label>experiment <select name="experiment"><option value="">all</option>
{% for e in data.experiments %}<option value="{{ e }}" {{ 'selected' if e == data.experiment else '' }}>{{ e }}</option>{% endfor %}</select></label>
<label>kind <select name="kind"><option value="">all</option>
{% for k in data.kinds %}<option value="{{ k }}" {{ 'selected' if k == data.kind else '' }}>{{ k }}</option>{% endfor %}</select></label>
<button type="submit">show</button></form>
<div class="wide"><table><tr><th class="l">run</th><th class="l">experiment</th><th class="l">kind</th><th class="l">status</th>
<th class="l">started (UTC)</th><th class="l">arms</th><th>calls</th><th>cost USD</th><th class="l">verdicts</th></tr>
{% for r in data.runs %}<tr><td class="l"><a href="/runs/{{ r.run_id | urlencode }}">{{ r.run_id }}</a></td>
<td class="l">{{ r.experiment }}</td><td class="l">{{ r.kind }}</td><td class="l">{{ r.status }}</td><td class="l">{{ r.started_at }}</td>
<td class="l wrap">{{ (r.arms or []) | join(', ') }}</td><td>{{ "{:,}".format(r.calls) }}</td><td>{{ fmt(r.cost_usd, '.4f') }}</td>
<td class="l wrap">{% for v in r.verdicts %}{{ v.arm_id }} {{ 'pass rate' if v.metric == 'pass_rate' else v.metric }}: <span class="{{ v.css }}">{{ v.word }}</span>{% if not loop.last %}<br>{% endif %}{% else %}–{% endfor %}</td></tr>
{% else %}<tr><td colspan="9" class="l">no runs</td></tr>{% endfor %}</table></div>
{{ pager(data, url) }}
<p class="note">JSON: <a href="{{ api }}">{{ api }}</a></p>
{% endblock %}"""

RUN = """{% extends "base.html" %}{% from "macros.html" import pager, case_rows %}
{% set r = data.report %}
{% block title %}{{ r.experiment }} {{ r.run_id }} — abharness{% endblock %}
{% block nav %}<a href="/?experiment={{ r.experiment | urlencode }}">{{ r.experiment }}</a>{% endblock %}
{% block body %}<h1>{{ r.experiment }}</h1>
<div class="meta">run <code>{{ r.run_id }}</code> · {{ r.status }} · started {{ r.started_at }} UTC · {{ r.n_cases }} cases · baseline <code>{{ r.baseline }}</code></div>
{% if r.description %}<p class="desc">{{ r.description }}</p>{% endif %}
{{ body }}
{% if data.cases %}<h2 id="cases">Cases: <code>{{ data.arm }}</code> against <code>{{ r.baseline }}</code></h2>
<div class="tabs">{% for o in data.others %}<a class="{{ 'on' if o == data.arm else '' }}" href="/runs/{{ r.run_id | urlencode }}?arm={{ o | urlencode }}#cases">{{ o }}</a>{% endfor %}</div>
<p><a href="/compare?{{ compare_query }}">compare, filter and search these cases</a> ·
<a href="/compare?{{ compare_query }}&amp;filter=regressions">regressions</a> ·
<a href="/compare?{{ compare_query }}&amp;filter=flaky">flaky</a></p>
{{ case_rows(data.cases.rows, side_a, side_b, true) }}
{{ pager(data.cases, url) }}{% endif %}
<p class="note">JSON: <a href="{{ api }}">{{ api }}</a></p>
{% endblock %}"""

COMPARE = """{% extends "base.html" %}{% from "macros.html" import pager, case_rows %}
{% block title %}{{ data.b }} against {{ data.a }} — abharness{% endblock %}
{% block body %}<h1>Compare</h1>
<p class="meta">a <code>{{ data.a }}</code> · b <code>{{ data.b }}</code> · paired by case id</p>
<ul class="verdicts">{% for s in sentences %}<li>{{ s }}</li>{% endfor %}</ul>
<form class="filters" method="get" action="/compare">
<input type="hidden" name="a" value="{{ data.a }}"><input type="hidden" name="b" value="{{ data.b }}">
<label>show <select name="filter">{% for f in data.filters %}<option value="{{ f }}" {{ 'selected' if f == data.filter else '' }}>{{ f }}</option>{% endfor %}</select></label>
<input type="search" name="q" value="{{ data.q or '' }}" placeholder="search variables and outputs">
<label>sort <select name="sort">{% for s in sorts %}<option value="{{ s }}" {{ 'selected' if s == data.sort else '' }}>{{ s }}</option>{% endfor %}</select></label>
<button type="submit">apply</button></form>
<p class="note">regressions: cases where b passes less often than a (or as often, with a lower score); flaky: cases whose repeats disagree on either side.</p>
{{ case_rows(data.rows, side_a, side_b, data.same_run) }}
{{ pager(data, url) }}
<p class="note">JSON: <a href="{{ api }}">{{ api }}</a></p>
{% endblock %}"""

CASE = """{% extends "base.html" %}
{% block title %}case {{ data.case_id }} — {{ data.run_id }} — abharness{% endblock %}
{% block nav %}<a href="/runs/{{ data.run_id | urlencode }}">run {{ data.run_id }}</a>{% endblock %}
{% block body %}<h1>Case <code>{{ data.case_id }}</code></h1>
<dl class="facts">{% for k, v in data.vars.items() %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}
{% if data.expected is not none %}<dt>expected</dt><dd>{{ data.expected }}</dd>{% endif %}</dl>
<p class="tabs">arms: {% for a in data.all_arms %}<a href="?arms={{ a | urlencode }}">{{ a }}</a>{% endfor %}</p>
<h2>Prompts sent</h2><div class="side" style="--n:{{ data.arms | length }}">
{% for s in data.arms %}<div class="call"><h4>{{ s.arm_id }}</h4>{% if s.calls %}<pre>{{ s.calls[0].prompt_text or '' }}</pre>{% else %}no call{% endif %}</div>{% endfor %}</div>
{% for row in data.repeats %}<h2>Repeat {{ row.repeat }}</h2>
<div class="side" style="--n:{{ row.calls | length }}">
{% for c in row.calls %}<div class="call">{% if c is none %}no call{% else %}
<h4>{{ c.arm_id }} <span class="{{ 'pass' if passed(c) else 'fail' }}">{{ 'passed' if passed(c) else 'failed' }}</span></h4>
{% if c.status != 'ok' %}<p class="fail">{{ c.error_type }}: {{ c.error_message }}</p>{% endif %}
<pre class="output">{{ c.response_text or '' }}</pre>
{% if row.diffs[loop.index0] %}<details open><summary>words against {{ row.calls[0].arm_id }}</summary><pre class="diff">{% for op, text in row.diffs[loop.index0] %}{% if op == 'del' %}<del>{{ text }}</del>{% elif op == 'add' %}<ins>{{ text }}</ins>{% else %}{{ text }}{% endif %}{% endfor %}</pre></details>{% endif %}
<dl class="facts">
{% for s in c.scores %}<dt>{{ s.scorer }}</dt><dd><span class="{{ 'pass' if s.passed else 'fail' }}">{{ fmt(s.value, '.3f') }}</span> {{ s.detail or '' }}</dd>{% endfor %}
<dt>tokens</dt><dd>{{ fmt(c.input_tokens, ',') }} in · {{ fmt(c.output_tokens, ',') }} out{% if c.usage_source %} ({{ c.usage_source }}){% endif %}</dd>
<dt>latency</dt><dd>{{ fmt(c.latency_ms, '.0f', ' ms') }} · TTFT {{ fmt(c.ttft_ms, '.0f', ' ms') }}</dd>
<dt>cost</dt><dd>{{ fmt(c.cost_usd, '.6f', ' USD') }}{% if c.cache_hit %} (cache){% endif %}</dd>
<dt>request id</dt><dd>{{ c.request_id or '–' }}</dd><dt>served model</dt><dd>{{ c.served_model or '–' }}</dd>
{% if c.served_by %}<dt>served by</dt><dd>{{ c.served_by }}</dd>{% endif %}
<dt>attempts</dt><dd>{{ c.attempts }}{% if c.finish_reason %} · finish {{ c.finish_reason }}{% endif %}</dd>
{% for e in c.attempt_errors %}<dt>{{ e.route or e.part or ('attempt ' ~ e.attempt) }}</dt><dd class="fail">{{ e.error_type }}: {{ e.message }}</dd>{% endfor %}
</dl>
{% for j in c.judges %}<details open><summary>judge {{ j.arm_id }}</summary><pre>{{ j.response_text or (j.error_type ~ ': ' ~ j.error_message) }}</pre></details>{% endfor %}
{% for p in c.parts %}<details><summary>{{ p.arm_id }}: {{ 'ok' if p.status == 'ok' else p.error_type }}</summary><pre>{{ p.response_text or p.error_message or '' }}</pre></details>{% endfor %}
{% endif %}</div>{% endfor %}</div>{% endfor %}
<p class="note">JSON: <a href="{{ api }}">{{ api }}</a></p>
{% endblock %}"""

ENV = Environment(
    loader=DictLoader(
        {
            "base.html": BASE,
            "macros.html": PAGER,
            "problem.html": PROBLEM,
            "runs.html": RUNS,
            "run.html": RUN,
            "compare.html": COMPARE,
            "case.html": CASE,
        }
    ),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
)
ENV.globals.update(fmt=w.fmt, css=CSS + VIEW_CSS)


def _passed(call: dict[str, Any]) -> bool:
    return call["status"] == "ok" and all(s["passed"] for s in call["scores"])


def render(template: str, request: Any = None, data: Any = None, **values: Any) -> str:
    """A page; `request` gives the links their query strings."""
    if request is not None:
        values.update(_links(template, request, data))
    return ENV.get_template(template).render(data=data, passed=_passed, **values)


def _links(template: str, request: Any, data: Any) -> dict[str, Any]:
    from ..store.browse import CASE_SORTS, Side

    params = dict(request.query_params)

    def url(**changes: Any) -> str:
        merged = {**params, **{k: str(v) for k, v in changes.items()}}
        return f"{request.url.path}?{urlencode(merged)}"

    path = request.url.path
    query = request.url.query
    out: dict[str, Any] = {
        "url": url,
        "api": f"/api{path if path != '/' else '/runs'}" + (f"?{query}" if query else ""),
    }
    if template == "run.html":
        out["body"] = Markup(data["body"])
        if data["cases"]:
            a, b = Side.parse(data["cases"]["a"]), Side.parse(data["cases"]["b"])
            out.update(side_a=a, side_b=b, compare_query=urlencode({"a": str(a), "b": str(b)}))
        out["url"] = lambda **changes: url(**changes) + "#cases"
    if template == "compare.html":
        out["side_a"], out["side_b"] = Side.parse(data["a"]), Side.parse(data["b"])
        out["sorts"] = [s for k in CASE_SORTS for s in (k, f"-{k}")]
        out["sentences"] = [
            Markup(w.marked_html(s, w.sentence_css(c)))
            for s, c in zip(data["sentences"], data["verdicts"], strict=True)
        ]
    return out


__all__ = ["render"]
