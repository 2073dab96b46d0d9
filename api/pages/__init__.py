"""Server-rendered pages for members (`/`) and admins (`/admin`), and their sign-in.

HTML from Jinja2 templates with no JavaScript at all: sorting is by links,
forms post plainly, and every figure comes from the services behind the JSON
API (`views`). Kept out of the OpenAPI document: the pages are for browsers,
and the JSON API is the contract for programs.
"""
