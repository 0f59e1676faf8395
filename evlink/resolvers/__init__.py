"""Use cases shared by GraphQL and REST. They know neither HTTP nor GraphQL."""
