"""The team teaches the bot from Slack: reactions on alerts become labels, and the labels are
counted into live precision.

- :mod:`.votes` (pure): what a person's reactions on an alert count as, read after read;
- :mod:`.read`: one paced read of the recent alerts' reactions through ``conversations.history``;
- :mod:`.report`: per topic, the alerts sent and how the team marked them, and the weekly summary;
- :mod:`.job`: the service's scheduled read, on its own thread and database connection.
"""
