"""The web pages in a real browser (Debian's chromium-headless-shell through Playwright): `adapterhub ui` over a
registry of tiny real adapters (the table, a search, paging, one adapter's page and its lineage links, two versions
compared, moving a tag with the key and being refused without it, a manifest full of markup shown as text, the
benchmarks), and `adapterhub serve`'s /ui (the serving view changing live after a request, the playground's
streamed answer equal to the same request through the ``openai`` client). Each page leaves a screenshot in
docs/images/ui-*.png for docs/ui.md. See tests/ui_browser.py for the browser, the servers and the registry."""

from __future__ import annotations

import re

import openai
import pytest
from ui_browser import (  # noqa: F401  (fixtures)
    HOSTILE_DESCRIPTION,
    HOSTILE_LABELS,
    INSTALL_HINT,
    KEY,
    browser_context_args,
    browser_type_launch_args,
    fill_registry,
    screenshot,
    start_adapterhub,
)

from adapterhub_registry import Registry

try:
    from playwright.sync_api import Page, expect
except ImportError:  # each test fails saying what to install (not skipped: CI must run them; not the whole run)
    Page = expect = None

    @pytest.fixture
    def page():
        pytest.fail(f"playwright is not installed: {INSTALL_HINT}", pytrace=False)


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ui_registry(tmp_path_factory):
    return fill_registry(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def ui_server(ui_registry):
    server = start_adapterhub(["ui", "--registry", str(ui_registry.root), "--api-key", KEY], ui_registry.home,
                              "/ui/adapters")  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def serve_server(ui_registry):
    server = start_adapterhub(
        ["serve", "--base", str(ui_registry.base_path), "--registry", str(ui_registry.root), "--api-key", KEY,
         "--load", "sentiment@1", "--load", "topic-00", "--slots", "2", "--max-rank", "8"],
        ui_registry.home, "/health",
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def watched(page: Page):
    """The page, with every dialog, uncaught script error and console error it produced in ``page.problems``."""
    problems: list[str] = []
    page.set_default_timeout(10_000)
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and problems.append(f"console: {message.text}"))
    page.problems = problems
    return page


def refs(page: Page) -> list[str]:
    return page.locator("#adapters tr[data-ref]").evaluate_all("rows => rows.map(r => r.dataset.ref)")


def sign_in(page: Page, url: str, then: str = "/ui/adapters") -> None:
    """Give the key on the sign-in page (a server with --api-key shows nothing before); lands on ``then``."""
    page.goto(url + "/ui/login?next=" + then)
    page.fill("input[name=key]", KEY)
    page.locator("input[name=key]").press("Enter")
    page.wait_for_url(url + then)


# ---- the registry's pages (`adapterhub ui`)


def test_root_redirects_to_the_table_of_the_newest_version_of_each_adapter(ui_server, ui_registry, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/")
    expect(watched).to_have_url(ui_server.url + "/ui/adapters")
    expected = {
        "sentiment@3",
        "blend@1",
        "tagged@2",
        "hostile@1",
        "shared@1",
        *(f"{n}@1" for n in ui_registry.page_names),
    }
    assert sorted(refs(watched)) == sorted(expected)
    expect(watched.locator("#total")).to_have_text(str(len(expected)))
    screenshot(watched, "adapters")
    watched.locator('#adapters tr[data-ref="sentiment@3"] a[href^="/ui/adapters/sentiment"]').first.click()
    expect(watched).to_have_url(re.compile(r"/ui/adapters/sentiment(/3)?$"))
    expect(watched.locator("#manifest")).to_contain_text("Sentiment, run 3")
    assert watched.problems == []


def test_search_box_and_metric_filter_narrow_the_table(ui_server, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters")
    watched.fill("#search input[name=q]", "sentiment")
    watched.locator("#search input[name=q]").press("Enter")
    expect(watched.locator("#total")).to_have_text("1")
    assert refs(watched) == ["sentiment@3"] and "q=sentiment" in watched.url
    screenshot(watched, "search")
    watched.goto(ui_server.url + "/ui/adapters?metric=accuracy>=0.7&sort=-metric:accuracy")
    assert refs(watched) == ["sentiment@3", "shared@1"]  # 0.83, 0.77; the topics stay under 0.7
    watched.goto(ui_server.url + "/ui/adapters?metric=accuracy>=0.7&sort=metric:accuracy")
    assert refs(watched) == ["shared@1", "sentiment@3"]
    assert watched.problems == []


def test_paging_walks_the_matches_five_at_a_time(ui_server, ui_registry, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters?q=topic&sort=name&size=5")
    names = [f"{n}@1" for n in sorted(ui_registry.page_names)]
    assert refs(watched) == names[:5] and watched.locator("a[rel=prev]").count() == 0
    expect(watched.locator("#total")).to_have_text("12")
    watched.locator("a[rel=next]").click()
    expect(watched.locator("#adapters tr[data-ref]").first).to_have_attribute("data-ref", names[5])
    assert refs(watched) == names[5:10]
    watched.locator("a[rel=next]").click()
    expect(watched.locator("#adapters tr[data-ref]").first).to_have_attribute("data-ref", names[10])
    assert refs(watched) == names[10:] and watched.locator("a[rel=next]").count() == 0
    screenshot(watched, "paging")
    watched.locator("a[rel=prev]").click()
    expect(watched.locator("#adapters tr[data-ref]").first).to_have_attribute("data-ref", names[5])
    assert watched.problems == []


@pytest.mark.parametrize(
    ("query", "message"),
    [("size=100000", "size"), ("page=99", "past the end"), ("colour=red", "colour"), ("metric=accuracy~0.7", "metric")],
)
def test_a_bad_query_string_answers_a_400_page_that_says_what_is_wrong(ui_server, watched, query, message):
    sign_in(watched, ui_server.url)
    response = watched.goto(ui_server.url + "/ui/adapters?" + query)
    assert response.status == 400
    expect(watched.locator("p#error")).to_contain_text(message)
    if query.startswith("page"):
        screenshot(watched, "bad-query")


def test_a_merged_adapters_lineage_links_to_its_inputs(ui_server, ui_registry, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/blend")
    links = watched.locator("svg#lineage a.lineage-link")
    hrefs = sorted(links.evaluate_all("links => links.map(a => a.getAttribute('href'))"))
    assert "/ui/adapters/sentiment/1" in hrefs and "/ui/adapters/topic-00/1" in hrefs
    screenshot(watched, "lineage")
    watched.locator('svg#lineage a.lineage-link[href="/ui/adapters/topic-00/1"]').click()
    expect(watched).to_have_url(ui_server.url + "/ui/adapters/topic-00/1")
    expect(watched.locator("#metrics")).to_contain_text("0.5")
    watched.go_back()
    watched.locator('svg#lineage a.lineage-link[href="/ui/adapters/sentiment/1"]').click()
    expect(watched).to_have_url(ui_server.url + "/ui/adapters/sentiment/1")
    expect(watched.locator("#manifest")).to_contain_text("Sentiment, run 1")
    expect(watched.locator("#metrics")).to_contain_text("0.62")
    expect(watched.locator("#tags")).to_contain_text("prod")
    for version in (1, 2, 3):
        expect(watched.locator("#versions")).to_contain_text(f"{version}")
    sha256 = Registry(ui_registry.root).resolve("sentiment@1").blob_sha256
    expect(watched.locator("#files")).to_contain_text(sha256)
    assert watched.locator("svg#curve").count() == 0  # version 1 recorded no history
    assert watched.problems == []


def test_an_adapter_page_shows_its_training_curve(ui_server, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/sentiment/3")
    expect(watched.locator("svg#curve")).to_be_visible()
    expect(watched.locator("svg#curve")).to_contain_text("train_loss")
    screenshot(watched, "adapter", watched.locator("svg#curve"))
    assert watched.problems == []


def test_a_fetched_adapter_names_the_remote_and_its_version_there(ui_server, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/shared")
    expect(watched.locator("svg#lineage")).to_contain_text("remote team")
    expect(watched.locator("svg#lineage")).to_contain_text("version 1 there")
    assert watched.problems == []


def test_comparing_two_versions_marks_the_settings_and_metrics_that_differ(ui_server, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/sentiment/2")
    form = watched.locator("form#compare-form")
    expect(form.locator("select[name=a]")).to_have_value("1")  # the version before this one, beside it
    expect(form.locator("select[name=b]")).to_have_value("2")
    form.locator("button, input[type=submit]").first.click()
    expect(watched).to_have_url(ui_server.url + "/ui/adapters/sentiment/compare?a=1&b=2")

    def row(table: str, key: str):
        return watched.locator(f"{table} tr").filter(has=watched.locator("th", has_text=re.compile(rf"^{key}$")))

    expect(row("#compare", r"peft_config\.r")).to_have_class("differs")
    expect(row("#compare", r"peft_config\.r").locator("td")).to_have_text(["4", "8"])
    expect(row("#compare", "method")).not_to_have_class("differs")
    expect(row("#compare-metrics", "accuracy")).to_have_class("differs")
    expect(row("#compare-metrics", "accuracy").locator("td")).to_have_text(["0.62", "0.71"])
    screenshot(watched, "compare", watched.locator("#compare tr.differs").first)
    watched.goto(ui_server.url + "/ui/adapters/sentiment/compare?a=1&b=1")
    expect(watched.locator("#compare tr").first).to_be_attached()
    expect(watched.locator("#compare tr.differs")).to_have_count(0)
    assert watched.problems == []


def test_a_signed_in_user_moves_a_tag_from_the_page(ui_server, ui_registry, watched):
    before = Registry(ui_registry.root).resolve("tagged:prod").version
    target = 3 - before  # tagged has versions 1 and 2
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/tagged")
    form = watched.locator("form#move-tag")
    form.locator("[name=tag]").fill("prod")
    form.locator("select[name=version]").select_option(str(target))
    screenshot(watched, "move-tag", form)
    form.locator("button, input[type=submit]").first.click()
    expect(watched).to_have_url(re.compile(r"/ui/adapters/tagged(/\d+)?$"))
    expect(watched.locator("#tags")).to_contain_text(re.compile(rf"prod\D*{target}"))
    assert Registry(ui_registry.root).resolve("tagged:prod").version == target
    assert watched.problems == []


def test_moving_a_tag_without_a_session_is_refused(ui_server, ui_registry, watched):
    before = Registry(ui_registry.root).resolve("tagged:prod").version
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/tagged")
    form = watched.locator("form#move-tag")
    form.locator("[name=tag]").fill("prod")
    form.locator("select[name=version]").select_option(str(3 - before))
    watched.context.clear_cookies()  # the session is gone; the form (and its CSRF token) stays
    with watched.expect_navigation() as navigation:
        form.locator("button, input[type=submit]").first.click()
    assert navigation.value.status == 403
    expect(watched.locator("p#error")).to_contain_text("sign in")
    screenshot(watched, "refused")
    assert Registry(ui_registry.root).resolve("tagged:prod").version == before


def test_signing_in_with_a_wrong_key_is_refused_and_shows_no_tag_form(ui_server, watched):
    watched.goto(ui_server.url + "/ui/login")
    watched.fill("input[name=key]", "sk-wrong")
    with watched.expect_navigation() as navigation:
        watched.locator("input[name=key]").press("Enter")
    assert navigation.value.status == 403
    watched.goto(ui_server.url + "/ui/adapters/tagged")  # still no session: the page asks for the key first
    expect(watched).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fadapters%2Ftagged$"))
    expect(watched.locator("#tags")).to_have_count(0)
    sign_in(watched, ui_server.url, then="/ui/adapters/tagged")  # and comes back to it
    expect(watched.locator("form#move-tag")).to_have_count(1)


def test_signing_out_ends_the_session_and_its_tag_form(ui_server, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/tagged")
    expect(watched.locator("form#move-tag")).to_have_count(1)
    cookie = next(c for c in watched.context.cookies() if c["path"] == "/ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert watched.evaluate("document.cookie") == ""  # scripts cannot read it
    watched.locator('form[action="/ui/logout"] button').click()
    expect(watched).to_have_url(ui_server.url + "/ui/login")
    watched.goto(ui_server.url + "/ui/adapters/tagged")  # the session is gone: the key is asked for again
    expect(watched).to_have_url(re.compile(r"/ui/login\?next="))
    expect(watched.locator("form#move-tag")).to_have_count(0)


def test_markup_in_a_manifest_shows_as_text_and_runs_nothing(ui_server, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/adapters/hostile")
    manifest = watched.locator("#manifest")
    expect(manifest).to_contain_text(HOSTILE_DESCRIPTION)
    for label in HOSTILE_LABELS:
        expect(manifest).to_contain_text(label)
    expect(watched.locator("svg#lineage")).to_contain_text("<img src=x onerror=alert(1)>.csv")
    assert watched.locator("img[src=x], #manifest script, #manifest img, svg#lineage img").count() == 0
    screenshot(watched, "escaping", watched.locator("#manifest"))
    watched.goto(ui_server.url + "/ui/adapters?q=hostile")
    assert refs(watched) == ["hostile@1"]
    watched.wait_for_timeout(300)  # a dialog or an image error would come within this
    assert watched.problems == []


def test_benchmark_results_show_as_tables_with_their_plots(ui_server, watched):
    sign_in(watched, ui_server.url)
    watched.goto(ui_server.url + "/ui/benchmarks")
    suite = watched.locator('a[href^="/ui/benchmarks/"]').first
    suite.click()
    expect(watched.locator("table.bench").first).to_be_visible()
    plot = watched.locator("img").first
    expect(plot).to_be_visible()
    assert plot.evaluate("img => img.complete && img.naturalWidth > 0")
    screenshot(watched, "benchmarks")
    assert watched.problems == []


# ---- under `adapterhub serve`


def row_numbers(page: Page, adapter: str) -> dict[str, float]:
    row = page.locator(f'#per-adapter tr[data-adapter="{adapter}"]')
    if row.count() == 0:
        return {"requests": 0, "tokens": 0}
    return {name: float(row.locator(f".{name}").inner_text().strip() or 0) for name in ("requests", "tokens")}


def test_the_serving_view_counts_a_request_without_reloading(serve_server, watched):
    sign_in(watched, serve_server.url)
    watched.goto(serve_server.url + "/ui/serving")
    expect(watched.locator("#slots")).to_contain_text("sentiment")
    for part in ("#host-cache", "#queue-depth", "#running", "#per-adapter"):
        expect(watched.locator(part)).to_be_attached()
    before = row_numbers(watched, "sentiment")
    watched.evaluate("window.sameDocument = true")  # gone if the page reloads
    client = openai.OpenAI(base_url=serve_server.url + "/v1", api_key=KEY, max_retries=0)
    answer = client.completions.create(model="sentiment@1", prompt="the movie was", max_tokens=6, temperature=0,
                                       extra_body={"min_tokens": 6})  # fmt: skip
    row = watched.locator('#per-adapter tr[data-adapter="sentiment"]')
    expect(row.locator(".requests")).to_have_text(str(int(before["requests"]) + 1), timeout=10_000)
    for figure in (".ttft", ".itl"):
        expect(row.locator(figure)).to_contain_text(re.compile(r"\d ms"))
    after = row_numbers(watched, "sentiment")
    assert after["tokens"] >= before["tokens"] + answer.usage.completion_tokens
    assert watched.evaluate("window.sameDocument === true")
    screenshot(watched, "serving")
    assert watched.problems == []


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_the_playground_streams_the_answers_the_api_gives(serve_server, watched, mode):
    sign_in(watched, serve_server.url)
    watched.goto(serve_server.url + "/ui/playground")
    watched.locator("select#adapter-a").select_option("sentiment")
    watched.locator("select#adapter-b").select_option("topic-00")
    watched.locator(f'input[name=mode][value="{mode}"]').check()
    watched.fill("textarea#prompt", "i love this film")
    watched.fill("input#max-tokens", "12")
    watched.fill("input#temperature", "0")  # greedy, as the requests below
    answers = []  # the API responses the page's script reads (whether the text shows in steps is timing)
    watched.on("response", lambda response: "/v1/" in response.url and answers.append(response))
    watched.click("button#send")
    outputs = {}
    for side in ("a", "b"):
        expect(watched.locator(f"pre#output-{side}")).to_have_attribute("data-done", "true", timeout=30_000)
        outputs[side] = watched.locator(f"pre#output-{side}").inner_text()
    screenshot(watched, f"playground-{mode}")
    client = openai.OpenAI(base_url=serve_server.url + "/v1", api_key=KEY, max_retries=0)
    for side, model in (("a", "sentiment"), ("b", "topic-00")):
        if mode == "chat":
            expected = client.chat.completions.create(model=model, max_tokens=12, temperature=0, messages=[
                {"role": "user", "content": "i love this film"}]).choices[0].message.content  # fmt: skip
        else:
            expected = client.completions.create(model=model, prompt="i love this film", max_tokens=12,
                                                 temperature=0).choices[0].text  # fmt: skip
        assert outputs[side] == expected and expected
    assert outputs["a"] != outputs["b"]
    assert sorted(r.request.post_data_json["model"] for r in answers) == ["sentiment", "topic-00"]
    for response in answers:
        assert response.request.post_data_json["stream"] is True
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.text().splitlines() if line.startswith("data: ")]
        assert len(events) > 2 and events[-1] == "data: [DONE]"  # one event per piece, then the end
    assert watched.problems == []
