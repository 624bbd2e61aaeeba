"""Inventory service: stock levels, reservations and restocking."""

import dataclasses
import datetime as dt
import logging
import threading
from collections import defaultdict
from typing import Dict, Iterable, List, Optional

log = logging.getLogger(__name__)

LOW_STOCK_THRESHOLD = 5
RESERVATION_TTL = dt.timedelta(minutes=15)


class InventoryError(Exception):
    """Raised when a stock operation cannot be carried out."""


class OutOfStock(InventoryError):
    def __init__(self, sku: str, wanted: int, available: int):
        super().__init__(f"{sku}: wanted {wanted}, only {available} available")
        self.sku = sku
        self.wanted = wanted
        self.available = available


@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    name: str
    price_cents: int
    weight_grams: int = 0

    @property
    def price(self) -> float:
        return self.price_cents / 100


@dataclasses.dataclass
class Reservation:
    reservation_id: str
    sku: str
    quantity: int
    created_at: dt.datetime

    def expired(self, now: dt.datetime) -> bool:
        return now - self.created_at > RESERVATION_TTL


class StockLedger:
    """Keeps stock levels and reservations for every SKU, thread-safe."""

    def __init__(self, items: Iterable[Item]):
        self._items: Dict[str, Item] = {item.sku: item for item in items}
        self._stock: Dict[str, int] = defaultdict(int)
        self._reservations: Dict[str, Reservation] = {}
        self._lock = threading.Lock()
        self._next_id = 0

    def item(self, sku: str) -> Item:
        try:
            return self._items[sku]
        except KeyError:
            raise InventoryError(f"unknown SKU {sku}") from None

    def available(self, sku: str) -> int:
        reserved = sum(r.quantity for r in self._reservations.values() if r.sku == sku)
        return self._stock[sku] - reserved

    def receive(self, sku: str, quantity: int) -> int:
        if quantity <= 0:
            raise InventoryError("quantity must be positive")
        self.item(sku)
        with self._lock:
            self._stock[sku] += quantity
            log.info("received %d of %s, now %d", quantity, sku, self._stock[sku])
            return self._stock[sku]

    def reserve(self, sku: str, quantity: int, now: Optional[dt.datetime] = None) -> Reservation:
        now = now or dt.datetime.now(dt.timezone.utc)
        with self._lock:
            self._expire(now)
            available = self.available(sku)
            if quantity > available:
                raise OutOfStock(sku, quantity, available)
            self._next_id += 1
            reservation = Reservation(f"r{self._next_id:06d}", sku, quantity, now)
            self._reservations[reservation.reservation_id] = reservation
            return reservation

    def commit(self, reservation_id: str) -> None:
        with self._lock:
            reservation = self._reservations.pop(reservation_id, None)
            if reservation is None:
                raise InventoryError(f"no reservation {reservation_id}")
            self._stock[reservation.sku] -= reservation.quantity

    def release(self, reservation_id: str) -> bool:
        with self._lock:
            return self._reservations.pop(reservation_id, None) is not None

    def _expire(self, now: dt.datetime) -> None:
        stale = [rid for rid, r in self._reservations.items() if r.expired(now)]
        for rid in stale:
            log.debug("reservation %s expired", rid)
            del self._reservations[rid]

    def low_stock(self, threshold: int = LOW_STOCK_THRESHOLD) -> List[str]:
        return sorted(sku for sku in self._items if self.available(sku) < threshold)


class RestockPlanner:
    """Suggests purchase orders from recent sales and lead times."""

    def __init__(self, ledger: StockLedger, lead_time_days: Dict[str, int]):
        self.ledger = ledger
        self.lead_time_days = lead_time_days
        self.sales: Dict[str, List[int]] = defaultdict(list)

    def record_sale(self, sku: str, quantity: int) -> None:
        self.sales[sku].append(quantity)
        if len(self.sales[sku]) > 30:
            self.sales[sku].pop(0)

    def daily_rate(self, sku: str) -> float:
        history = self.sales.get(sku, [])
        return sum(history) / len(history) if history else 0.0

    def suggest(self) -> Dict[str, int]:
        orders = {}
        for sku in self.ledger.low_stock():
            lead = self.lead_time_days.get(sku, 7)
            wanted = int(self.daily_rate(sku) * (lead + 7)) - self.ledger.available(sku)
            if wanted > 0:
                orders[sku] = wanted
        return orders


class StockReport:
    """Renders stock levels as rows, CSV or aligned text."""

    def __init__(self, ledger: StockLedger):
        self.ledger = ledger

    def rows(self) -> List[Dict[str, object]]:
        rows = []
        for sku in sorted(self.ledger._items):
            item = self.ledger.item(sku)
            rows.append({
                "sku": sku,
                "name": item.name,
                "available": self.ledger.available(sku),
                "price": f"{item.price:.2f}",
            })
        return rows

    def to_csv(self) -> str:
        lines = ["sku,name,available,price"]
        for row in self.rows():
            lines.append(",".join(str(row[key]) for key in ("sku", "name", "available", "price")))
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        rows = self.rows()
        width = max((len(str(row["name"])) for row in rows), default=4)
        out = []
        for row in rows:
            flag = " (low)" if int(row["available"]) < LOW_STOCK_THRESHOLD else ""
            out.append(f"{row['sku']:<8} {row['name']:<{width}} {row['available']:>5}{flag}")
        return "\n".join(out)


def order_weight(ledger: StockLedger, lines: Dict[str, int]) -> int:
    return sum(ledger.item(sku).weight_grams * quantity for sku, quantity in lines.items())


def order_total_cents(ledger: StockLedger, lines: Dict[str, int]) -> int:
    total = 0
    for sku, quantity in lines.items():
        total += ledger.item(sku).price_cents * quantity
    return total


def shipping_cents(weight_grams: int) -> int:
    if weight_grams <= 500:
        return 495
    if weight_grams <= 2000:
        return 895
    return 895 + 250 * ((weight_grams - 2000 + 999) // 1000)


def checkout(ledger: StockLedger, lines: Dict[str, int]) -> Dict[str, int]:
    reservations = []
    try:
        for sku, quantity in lines.items():
            reservations.append(ledger.reserve(sku, quantity))
    except OutOfStock:
        for reservation in reservations:
            ledger.release(reservation.reservation_id)
        raise
    for reservation in reservations:
        ledger.commit(reservation.reservation_id)
    weight = order_weight(ledger, lines)
    return {
        "items": order_total_cents(ledger, lines),
        "shipping": shipping_cents(weight),
        "weight": weight,
    }


def load_catalog(rows: Iterable[Dict[str, str]]) -> List[Item]:
    items = []
    for row in rows:
        items.append(
            Item(
                sku=row["sku"].strip().upper(),
                name=row["name"].strip(),
                price_cents=int(round(float(row["price"]) * 100)),
                weight_grams=int(row.get("weight", 0) or 0),
            )
        )
    return items


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    catalog = load_catalog([
        {"sku": "mug-01", "name": "Mug", "price": "8.50", "weight": "350"},
        {"sku": "tee-02", "name": "T-shirt", "price": "19.00", "weight": "200"},
    ])
    ledger = StockLedger(catalog)
    ledger.receive("MUG-01", 12)
    ledger.receive("TEE-02", 3)
    planner = RestockPlanner(ledger, {"TEE-02": 10})
    print(checkout(ledger, {"MUG-01": 2, "TEE-02": 1}))
    planner.record_sale("TEE-02", 1)
    print(planner.suggest())
    print(StockReport(ledger).to_text())


if __name__ == "__main__":
    main()
