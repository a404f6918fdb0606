"""Number normalisation and masking (sipmask/numbers.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmask import numbers

A, X = "13800000001", "700100000000001"


@pytest.mark.parametrize("raw", [A, "+8613800000001", "+86 138-0000-0001", "008613800000001",
                                 "8613800000001", "tel:+86-138-0000-0001;phone-context=x",
                                 " (138) 0000 0001 "])
def test_mobile_forms_normalise_to_national(raw: str) -> None:
    assert numbers.normalise_real(raw) == A


@pytest.mark.parametrize(("raw", "want"), [("+86 10 1234 5678", "01012345678"),
                                           ("01012345678", "01012345678"),
                                           ("0086" + X, X), ("86" + X, X), ("tel:+86" + X, X)])
def test_fixed_lines_and_x(raw: str, want: str) -> None:
    assert numbers.normalise(raw) == want


@pytest.mark.parametrize(("raw", "says"), [("1234", "not a valid mobile"),
                                           ("+1 555 0100", r"only \+86"), ("", "empty"),
                                           (X, "700 number cannot be a real party"),
                                           ("138abc00001", "only digits")])
def test_real_refusals_say_why(raw: str, says: str) -> None:
    with pytest.raises(numbers.NumberError, match=says):
        numbers.normalise_real(raw)


def test_x_refusals() -> None:
    with pytest.raises(numbers.NumberError, match="15-digit"):
        numbers.normalise_x(A)


@given(st.text(alphabet="0123456789+-() tel:;86", max_size=20))
def test_the_fast_path_agrees_with_the_full_normaliser(raw: str) -> None:
    # normalise_real/normalise_x return national input unchanged without the full pass;
    # whatever they accept must be exactly what normalise() makes of it.
    for strict, check in ((numbers.normalise_real, numbers.is_real),
                          (numbers.normalise_x, numbers.is_x)):
        try:
            got = strict(raw)
        except numbers.NumberError:
            continue
        assert got == numbers.normalise(raw) and check(got)


def test_mask() -> None:
    assert numbers.mask(A) == "138****0001"
    assert numbers.mask("12345") == "*****"
    assert numbers.mask_text(f"a={A} x={X}") == f"a=138****0001 x={X}"


def test_full_width_digits_are_refused_but_still_masked_in_logs() -> None:
    import pytest

    from sipmask import numbers
    with pytest.raises(numbers.NumberError):
        numbers.normalise_real("13８00000001")
    assert "１３８００００００００１" not in numbers.mask_text("from １３８００００００００１")


@pytest.mark.parametrize(("raw", "want"), [
    (X, (X, None)),
    (X + "1234", (X, "1234")),
    ("+86 " + X + "0042", (X, "0042")),
    ("0086" + X + "7", (X, "7")),
    ("86" + X + "12345678", (X, "12345678")),
    ("tel:+86-" + X + "-99;phone-context=x", (X, "99")),
])
def test_an_axe_request_uri_user_is_x_then_the_extension(raw: str,
                                                         want: tuple[str, str | None]) -> None:
    assert numbers.normalise_x_ext(raw) == want


@pytest.mark.parametrize("raw", [X + "123456789", A, "7001" + "0" * 10, X + "12a"])
def test_anything_else_is_not_an_x_with_an_extension(raw: str) -> None:
    with pytest.raises(numbers.NumberError):
        numbers.normalise_x_ext(raw)
