"""View code the panels share: the generic create, edit and delete pages."""
