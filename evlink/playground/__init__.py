"""The self-hosted GraphiQL playground served at ``GET /graphql``.

Its JavaScript and CSS come from pinned npm packages, copied into
``static/vendor/`` at install time by :mod:`evlink.playground.vendor`
(``make install``); nothing is loaded from another host at run time.
:mod:`evlink.playground.page` renders the page. This module imports nothing,
so that the build step runs before the package's dependencies are installed.
"""
