"""Entities: the keys features hang on."""

from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper (contract user_id).")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalog item (contract item_id).")
category = Entity(
    name="category", join_keys=["category_id"], value_type=ValueType.STRING, description="An item category."
)
