"""Generic create, edit and delete pages, after NetBox's ``ObjectEditView`` and
``ObjectDeleteView``: a route names its form, the service call, the template, the
message and where to go next; how a submission is judged and answered is written
here once.

Services judge the values: their ``ValidationError`` goes back under the form's
fields (422), and the refusals a page names (``Forbidden``, ``Conflict``) are flashed
on the way to another page.  Audit records are the services' business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import flash, redirect, render_template
from flask.typing import ResponseReturnValue

from app.errors import Conflict, ServiceError, ValidationError
from app.forms import ServiceForm, form_status

F = TypeVar("F", bound=ServiceForm)
T = TypeVar("T")


def edit_object(form: F, save: Callable[[F], T], template: str, *,
                message: Callable[[T], str], next_url: str | Callable[[T], str],
                check: Callable[[dict[str, Any]], dict[str, str]] | None = None,
                refused: tuple[type[ServiceError], ...] = (), refused_url: str = "",
                conflict_field: str | None = None,
                answer: Callable[[T], ResponseReturnValue | None] | None = None,
                **context: Any) -> ResponseReturnValue:
    """Show ``form`` in ``template``; once it is submitted and valid, ``save`` it.

    :param save: calls the service with the form and returns what it saved.
    :param message: the success message, flashed, of what was saved.
    :param next_url: where a success leads (or a function of what was saved).
    :param check: the service's own check of a form whose fields did not all parse
        (``SiteForm.validate_on_submit_with``), so one submission shows every problem.
    :param refused: errors flashed on the way to ``refused_url`` instead of the page.
    :param conflict_field: the field under which a ``Conflict`` is shown.
    :param answer: what a success answers instead of the redirect (None: redirect).
    :param context: the template's other variables.
    """
    valid = (form.validate_on_submit_with(check)
             if check is not None else form.validate_on_submit())
    if valid:
        try:
            saved = save(form)
        except ServiceError as exc:
            if isinstance(exc, ValidationError):
                form.add_service_errors(exc.fields)
            elif conflict_field is not None and isinstance(exc, Conflict):
                form.add_service_errors({conflict_field: exc.message})
            elif isinstance(exc, refused):
                flash(exc.message, "error")
                return redirect(refused_url)
            else:
                raise
        else:
            flash(message(saved), "success")
            shown = answer(saved) if answer is not None else None
            if shown is not None:
                return shown
            return redirect(next_url(saved) if callable(next_url) else next_url)
    return render_template(template, form=form, **context), form_status(form)


def delete_object(delete: Callable[[], object], *, message: str, next_url: str,
                  refused: tuple[type[ServiceError], ...] = ()) -> ResponseReturnValue:
    """Call ``delete`` (the service) and go to ``next_url`` with ``message``, or with
    the service's reason when it refuses with one of ``refused``."""
    try:
        delete()
    except refused as exc:
        flash(exc.message, "error")
    else:
        flash(message, "success")
    return redirect(next_url)
