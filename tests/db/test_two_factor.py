"""Two-factor sign-in, the service: enrolment, codes good once, recovery codes good
once, turning it off and an administrator's reset, each in the audit log."""

from __future__ import annotations

import time

import pyotp
import pytest
from sqlalchemy import select, text

from app.errors import Conflict, Forbidden, ValidationError
from app.extensions import db as _db
from app.models import AuditLog, RecoveryCode
from app.services import settings, two_factor
from tests import factories


def _actions(user_id: int) -> list[str]:
    return list(_db.session.scalars(select(AuditLog.action).where(
        AuditLog.object_type == "user", AuditLog.object_id == str(user_id))
        .order_by(AuditLog.id)))


def _enrol(user) -> tuple[pyotp.TOTP, list[str]]:
    """Enrol ``user`` with the code of the previous step, so the test's own codes of
    this step and the next are still unused."""
    enrolment = two_factor.begin_enrolment(user)
    totp = pyotp.TOTP(enrolment.secret)
    return totp, two_factor.confirm_enrolment(user, totp.at(time.time(), counter_offset=-1))


def _field_error(excinfo: pytest.ExceptionInfo[ValidationError], field: str = "code") -> str:
    return excinfo.value.fields[field]


def test_enrolment_keeps_its_secret_until_confirmed_and_stores_it_encrypted(db, alice):
    first = two_factor.begin_enrolment(alice)
    assert two_factor.begin_enrolment(alice) == first  # a reload shows the same secret
    assert first.uri.startswith("otpauth://totp/") and "alice" in first.uri
    assert not two_factor.is_enabled(alice)
    (raw,) = db.session.execute(text(f"SELECT totp_secret FROM users WHERE id={alice.id}")).one()
    assert first.secret not in raw


def _wrong_code(totp: pyotp.TOTP) -> str:
    """Six digits that are no code of the accepted window."""
    now = time.time()
    accepted = {totp.at(now, counter_offset=offset) for offset in (-1, 0, 1, 2)}
    return next(code for code in (f"{n:06d}" for n in range(1000)) if code not in accepted)


def test_a_wrong_code_does_not_turn_it_on(db, alice):
    totp = pyotp.TOTP(two_factor.begin_enrolment(alice).secret)
    with pytest.raises(ValidationError) as excinfo:
        two_factor.confirm_enrolment(alice, _wrong_code(totp))
    assert "not correct" in _field_error(excinfo)
    assert not two_factor.is_enabled(alice)


def test_confirming_turns_it_on_with_ten_recovery_codes(db, alice):
    _, codes = _enrol(alice)
    assert two_factor.is_enabled(alice)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(len(code) == 19 and code.count("-") == 3 for code in codes)
    stored = list(db.session.scalars(select(RecoveryCode.code_hash)))
    assert len(stored) == 10 and not set(codes) & set(stored)
    assert two_factor.recovery_codes_left(alice) == 10
    assert _actions(alice.id)[-1] == "user.two_factor.enable"
    with pytest.raises(Conflict):
        two_factor.begin_enrolment(alice)


def test_a_code_signs_in_once_and_never_again(db, alice):
    totp, _ = _enrol(alice)
    code = totp.now()
    assert two_factor.verify_sign_in(alice, code) == "totp"
    with pytest.raises(ValidationError) as excinfo:
        two_factor.verify_sign_in(alice, code)
    assert "already used" in _field_error(excinfo)
    # The step before the one used is as spent; the next one is good (one step of drift).
    with pytest.raises(ValidationError):
        two_factor.verify_sign_in(alice, totp.at(time.time(), counter_offset=-1))
    assert two_factor.verify_sign_in(alice, totp.at(time.time(), counter_offset=1)) == "totp"


def test_codes_outside_the_window_and_malformed_input_are_refused(db, alice):
    totp, _ = _enrol(alice)
    with pytest.raises(ValidationError) as excinfo:
        two_factor.verify_sign_in(alice, totp.at(time.time(), counter_offset=3))
    assert "not correct" in _field_error(excinfo)
    for junk in ("", "12345", "abc", "1234567"):
        with pytest.raises(ValidationError) as excinfo:
            two_factor.verify_sign_in(alice, junk)
        assert "6-digit code" in _field_error(excinfo)


def test_spaces_in_a_code_are_ignored(db, alice):
    totp, _ = _enrol(alice)
    code = totp.now()
    assert two_factor.verify_sign_in(alice, f" {code[:3]} {code[3:]} ") == "totp"


def test_a_recovery_code_works_once_in_any_case_and_is_audited(db, alice):
    _, codes = _enrol(alice)
    assert two_factor.verify_sign_in(alice, codes[0].upper()) == "recovery"
    assert two_factor.recovery_codes_left(alice) == 9
    assert _actions(alice.id)[-1] == "auth.recovery_code"
    with pytest.raises(ValidationError) as excinfo:
        two_factor.verify_sign_in(alice, codes[0])
    assert "already used" in _field_error(excinfo)
    assert two_factor.verify_sign_in(alice, codes[1].replace("-", "")) == "recovery"


def test_another_accounts_recovery_code_is_not_one_of_yours(db, alice, bob):
    _enrol(alice)
    _, bobs = _enrol(bob)
    with pytest.raises(ValidationError) as excinfo:
        two_factor.verify_sign_in(alice, bobs[0])
    assert "not one of your recovery codes" in _field_error(excinfo)


def test_new_recovery_codes_need_the_password_or_a_code_and_void_the_old(db, alice):
    totp, old = _enrol(alice)
    with pytest.raises(ValidationError) as excinfo:
        two_factor.regenerate_recovery_codes(alice, "not my password at all")
    assert "neither your password" in _field_error(excinfo, "proof")
    new = two_factor.regenerate_recovery_codes(alice, factories.PASSWORD)
    assert len(new) == 10 and not set(new) & set(old)
    with pytest.raises(ValidationError):
        two_factor.verify_sign_in(alice, old[0])
    assert two_factor.regenerate_recovery_codes(alice, totp.now())
    assert _actions(alice.id).count("user.two_factor.recovery_codes") == 2


def test_turning_it_off_needs_proof_and_is_audited(db, alice):
    totp, _ = _enrol(alice)
    code = totp.now()
    two_factor.verify_sign_in(alice, code)
    with pytest.raises(ValidationError) as excinfo:
        two_factor.disable(alice, code)  # a code already used is no proof
    assert "already used" in _field_error(excinfo, "proof")
    two_factor.disable(alice, factories.PASSWORD)
    assert not two_factor.is_enabled(alice) and alice.totp_secret is None
    assert two_factor.recovery_codes_left(alice) == 0
    assert _actions(alice.id)[-1] == "user.two_factor.disable"
    with pytest.raises(Conflict):
        two_factor.disable(alice, factories.PASSWORD)


def test_an_administrator_resets_someone_elses_two_factor(db, admin, alice, bob):
    _enrol(alice)
    with pytest.raises(Forbidden):
        two_factor.reset(bob, alice.id)
    two_factor.reset(admin, alice.id)
    assert not two_factor.is_enabled(alice)
    entry = db.session.scalars(select(AuditLog).order_by(AuditLog.id.desc())).first()
    assert entry.action == "user.two_factor.reset" and entry.user_id == admin.id
    assert entry.object_id == str(alice.id)
    with pytest.raises(Conflict):
        two_factor.reset(admin, alice.id)
    _enrol(admin)
    with pytest.raises(Forbidden):
        two_factor.reset(admin, admin.id)


def test_a_sign_in_ticket_expires_and_dies_with_a_password_change(db, alice, monkeypatch):
    _enrol(alice)
    ticket = two_factor.sign_in_ticket(alice)
    assert two_factor.ticket_user(ticket) == alice
    assert two_factor.ticket_user({**ticket, "user": str(alice.id)}) is None
    assert two_factor.ticket_user(None) is None
    later = time.time() + two_factor.TICKET_SECONDS + 1
    monkeypatch.setattr(two_factor.time, "time", lambda: later)
    assert two_factor.ticket_user(ticket) is None
    monkeypatch.undo()
    alice.password_hash = "changed"
    assert two_factor.ticket_user(ticket) is None


def test_administrators_must_enrol_only_when_the_setting_says_so(db, admin, alice):
    assert not two_factor.enrolment_required(admin)
    settings.update_security_settings(admin, {"require_admin_two_factor": True})
    assert two_factor.enrolment_required(admin) and not two_factor.enrolment_required(alice)
    _enrol(admin)
    assert not two_factor.enrolment_required(admin)
    with pytest.raises(ValidationError) as excinfo:
        settings.update_security_settings(admin, {"require_admin_two_factor": "yes", "x": 1})
    assert set(excinfo.value.fields) == {"require_admin_two_factor", "x"}
    settings.update_security_settings(admin, {"require_admin_two_factor": False})
    assert settings.get_security_settings(admin) == {"require_admin_two_factor": False}
    assert _actions_of_settings() == [True, False]
    with pytest.raises(Forbidden):
        settings.get_security_settings(alice)


def _actions_of_settings() -> list[bool]:
    return [entry.details["require_admin_two_factor"] for entry in _db.session.scalars(
        select(AuditLog).where(AuditLog.action == "settings.security").order_by(AuditLog.id))]
