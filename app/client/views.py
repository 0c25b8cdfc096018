from flask import render_template_string

from app.client import bp

for _name in ("dashboard", "tokens", "profile"):
    bp.add_url_rule(f"/{_name}" if _name != "dashboard" else "/", _name,
                    lambda: render_template_string("client"))
