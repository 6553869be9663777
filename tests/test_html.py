from explorer.html import Mark, highlight_html


def test_trace_text_is_escaped_inside_and_outside_marks():
    text = '<script>alert(1)</script> Wait <img src=x onerror="alert(2)">'
    out = highlight_html(text, [Mark(26, 30, "#fff", 'group "x"')])
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;" in out and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in out
    assert '<mark style="background:#fff" title="group &quot;x&quot;">Wait</mark>' in out


def test_overlapping_marks_do_not_nest():
    out = highlight_html("abcdef", [Mark(0, 3, "#a", "a"), Mark(2, 5, "#b", "b")])
    assert out.count("<mark") == 1
